"""The evaluation layer: attacks run on a split and written into eval.json.

- :mod:`.settings`: :class:`EvalSettings` (one set of evaluation settings and their defaults,
  :data:`DEFAULT_ATTACKS` among them, taken by every entry point);
- :mod:`.evaluate`: :func:`evaluate_model` (a model on a split);
- :mod:`.batches`: an attack's batches, each attacked, checked and scored into a record, and the
  records merged into the attack's eval.json entry;
- :mod:`.checks`: :func:`check_adversarial` (every adversarial example in the eps-ball and the box
  before it is scored) and the 8-bit rounding;
- :mod:`.run`: :func:`evaluate_run` (a virkit run directory or checkpoint, with the run's own
  checkpoint, seed, eps and test subset);
- :mod:`.sources`: any model (``module:callable``, ``robustbench:NAME``, TorchScript) and
  :func:`evaluate_source`;
- :mod:`.loading`: building a ``module:callable`` or RobustBench model and reading weights files;
- :mod:`.document`: what eval.json says (fingerprints, worst case, fairness, masking warnings);
- :mod:`.export`: a run as a RobustBench model-zoo entry.
"""

from virkit.evaluation.checks import check_adversarial
from virkit.evaluation.document import EVAL_FORMAT, load_adversarial, masking_warnings
from virkit.evaluation.evaluate import evaluate_model
from virkit.evaluation.export import export_robustbench
from virkit.evaluation.run import evaluate_run
from virkit.evaluation.settings import DEFAULT_ATTACKS, EvalSettings, attack_list
from virkit.evaluation.sources import check_model, classify, default_out, evaluate_source, load_source, source_slug

__all__ = [
    "EvalSettings",
    "DEFAULT_ATTACKS",
    "evaluate_model",
    "evaluate_run",
    "evaluate_source",
    "load_source",
    "check_model",
    "check_adversarial",
    "masking_warnings",
    "load_adversarial",
    "EVAL_FORMAT",
    "attack_list",
    "classify",
    "default_out",
    "source_slug",
    "export_robustbench",
]
