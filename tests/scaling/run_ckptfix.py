"""Run ckptfix's API in this fresh process, with N logical CPU devices configured before TensorFlow starts
(TensorFlow allows that only before its first use, hence a process per run).

    python run_ckptfix.py --logical-cpus 2 --command recalibrate CKPT DATA.npy --options '{"devices": 2}' --report R.json

Writes the report's ``to_dict()`` to --report; a ckptfix error prints ``error: ...`` and exits with its code.
"""

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--logical-cpus", type=int, default=1)
    parser.add_argument("--command", default="recalibrate")
    parser.add_argument("--options", default="{}")
    parser.add_argument("--report")
    parser.add_argument("paths", nargs="*")
    args = parser.parse_args()
    import numpy as np
    import tensorflow as tf

    if args.logical_cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_cpus)
    import ckptfix
    from ckptfix.errors import CkptfixError

    checkpoint, data = args.paths
    run = getattr(ckptfix, args.command)
    try:
        report = run(checkpoint, np.load(data), **json.loads(args.options))
    except CkptfixError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    Path(args.report).write_text(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
