"""The decision catalogue: labelled cases of real models and calibration data, each with ground truth
measured by plain TensorFlow evaluation on held-out data (not by the tool), and what ckptfix decides on them.

    subjects.py   the models (Keras ones trained here in-process, the slim fixtures, the demo) and their domains
    cases.py      the labelled cases: a subject, its calibration data, the options a user would pass
    truth.py      held-out accuracies (stored / repair / oracle / training) and the truth labels from them
    catalogue.py  one case run end to end (truth, then the tool without force); the confusion matrices;
                  ``python -m decisions.catalogue --markdown`` from tests/ (or benchmarks/decision_catalogue.py)
    test_decisions.py  one test per case (off-diagonal is empty), and the matrices printed

docs/decisions.md states every definition, margin and policy.
"""
