"""The tuning guides every preset, threshold and rule of ``pagellm.tuning`` comes from.

The guides are Chinese Markdown/text files kept beside the project (``shared/seeds/``); each rule
cites one as ``cite(SEED_SCHEDULING, "4.2 参数调优决策树")`` -> ``"001_a001effc249e1005.txt §4.2
参数调优决策树"``, so a reader can open the file at the section the number comes from.
"""

from __future__ import annotations

SEED_GUIDE = "000_565f94aa4a0670a8.txt"
"""vLLM 性能调优指南: metrics, core knobs one by one, common problems."""
SEED_SCHEDULING = "001_a001effc249e1005.txt"
"""调度性能调优实战: the four scenario presets, the decision tree, anti-patterns, checklist."""
SEED_PRACTICE = "002_eae516be84be8566.txt"
"""vLLM-99-最佳实践与案例: case studies and performance targets."""
SEED_V1 = "003_f5b5fcbd6a7f45fd.txt"
"""vLLM V1 优化与性能调优指南: preemption, chunked prefill, parallelism, memory."""
SEED_V1_LONG = "004_e1e284fa62b85d3b.txt"
"""vLLM 优化与性能调优指南 (long form): the knob table and the OOM order."""


def cite(seed: str, section: str) -> str:
    """``"<seed file> §<section>"``: where a number or a rule comes from."""
    return f"{seed} §{section}"
