"""plot_report writes a PNG a reviewer can read: read back, sized for the layer count, not blank."""

import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from ckptfix.render.plot import plot_report
from render.reports import synthetic_report


def render(report: dict, path):
    """plot_report's PNG bytes written to ``path`` (as the pipeline writes side outputs)."""
    path.write_bytes(plot_report(report, "png"))
    return path


def read_png(path):
    image = imread(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return image


def distinct_colours(image) -> int:
    rgb = (image[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    return len(np.unique(rgb, axis=0))


@pytest.mark.parametrize("layers", [5, 150])
def test_synthetic_reports_render_at_readable_sizes(tmp_path, layers):
    path = render(synthetic_report(layers), tmp_path / "drift.png")
    image = read_png(path)
    height, width = image.shape[:2]
    assert height >= 600 and width >= 800
    assert width > 1500 if layers == 150 else width < 1000  # the figure widens with the layer count
    assert distinct_colours(image) > 50
    red = np.all(np.abs(image[..., :3] - np.array([0xD6, 0x27, 0x28]) / 255) < 0.02, axis=-1)
    blue = np.all(np.abs(image[..., :3] - np.array([0x1F, 0x77, 0xB4]) / 255) < 0.02, axis=-1)
    assert red.sum() > 3 * blue.sum() > 0  # 2 of every 3 layers stale, bars drawn in both colours


def test_a_real_diagnosis_renders(real_report, tmp_path):
    path = render({**real_report, "cause": {"code": "update-ops-not-run", "message": "cause: example",
                                                 "train_op": "Adam", "update_ops": [], "evidence": []}},
                       tmp_path / "real.png")
    image = read_png(path)
    assert image.shape[0] >= 600 and distinct_colours(image) > 50
    assert path.stat().st_size < 150_000


def test_without_agreement_the_panel_says_so(tmp_path):
    report = {**synthetic_report(3), "agreement": None}
    assert distinct_colours(read_png(render(report, tmp_path / "no-agreement.png"))) > 20


def test_the_extension_picks_the_format_and_others_are_refused(tmp_path):
    from ckptfix.errors import CkptfixError
    from ckptfix.render.plot import image_format

    assert image_format(tmp_path / "drift.pdf") == "pdf" and image_format("d.SVG") == "svg"
    assert plot_report(synthetic_report(3), "pdf").startswith(b"%PDF")
    assert b"<svg" in plot_report(synthetic_report(3), "svg")[:400]
    for bad in ("drift.xyz", "drift"):
        with pytest.raises(CkptfixError, match="picture format"):
            image_format(bad)


@pytest.mark.subprocess
def test_without_matplotlib_a_one_line_error_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from ckptfix.render.plot import plot_report\n"
            "from ckptfix.errors import CkptfixError\n"
            "try:\n    plot_report({'kind': 'diagnosis', 'layers': []}, 'png')\n"
            "except CkptfixError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stdout.strip() == "--plot needs matplotlib: pip install 'ckptfix[plot]'", result.stderr
    assert not (tmp_path / "x.png").exists()


def _text_boxes(figure):
    """Every drawn text of ``figure`` with its extent in display pixels, after the layout ran."""
    from matplotlib.text import Text

    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    return [(text.get_text(), text.get_window_extent(renderer)) for text in figure.findobj(Text)
            if text.get_visible() and text.get_text().strip()]


LONG_CAUSE = {"code": "update-ops-not-run", "train_op": "train_op/Adam", "update_ops": [], "evidence": [],
              "message": "the train op InceptionV3/train_op/Adam never runs the 188 BN update ops, so the moving "
                         "statistics never followed training ((group_deps runs both: if training ran that, look "
                         "elsewhere).\nFix the training script: build the train op inside ..."}


@pytest.mark.parametrize("kind, layers", [("diagnosis", 2), ("recalibration", 2), ("diagnosis", 150)])
def test_every_text_inside_the_canvas_and_the_title_clear_of_the_legend(kind, layers):
    """The cause line of the title was cut off at the right edge, and the title ran into the legend."""
    from ckptfix.render.plot import draw_report

    report = {**synthetic_report(layers, kind), "cause": LONG_CAUSE}
    figure = draw_report(report)
    boxes = _text_boxes(figure)
    canvas = figure.bbox
    for text, box in boxes:
        assert box.x0 >= canvas.x0 - 1 and box.x1 <= canvas.x1 + 1, (text, box, canvas)
        assert box.y0 >= canvas.y0 - 1 and box.y1 <= canvas.y1 + 1, (text, box, canvas)
    title = figure._suptitle.get_window_extent(figure.canvas.get_renderer())
    assert title.x1 <= 0.99 * canvas.x1  # a title line reaching the very edge shows cut in the PNG
    assert "cause: the train op InceptionV3/train_op/Adam" in figure._suptitle.get_text()
    assert "188 BN update ops" in figure._suptitle.get_text()  # wrapped, not shortened
    legend = figure.legends[0].get_window_extent(figure.canvas.get_renderer())
    assert not title.overlaps(legend)


def test_the_legend_names_only_the_kinds_of_layer_drawn():
    from ckptfix.render.plot import draw_report

    all_stale = synthetic_report(3)
    for layer in all_stale["layers"]:
        layer["drift"]["verdict"] = "stale"
    labels = [text.get_text() for text in draw_report(all_stale).legends[0].get_texts()]
    assert "stale layer" in labels and "fresh layer" not in labels
    labels = [text.get_text() for text in draw_report(synthetic_report(3)).legends[0].get_texts()]
    assert "stale layer" in labels and "fresh layer" in labels
