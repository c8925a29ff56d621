"""Run layer checks on spawned gloo tensor-parallel ranks (CPU): each rank joins a TP group of
``world_size``, runs ``checks(rank, failures)`` (a module-level function, so that spawn can
import it) and writes its failures to a file that the test reads back; one spawn per test
(starting processes is the slow part), and a wrong shard fails with the check's name."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path
from typing import Callable

import torch

Checks = Callable[[int, list], None]


def check_close(name: str, got: torch.Tensor, expected: torch.Tensor, failures: list[str]) -> None:
    """Append ``name`` and the mismatch to ``failures`` unless got ~= expected (1e-5)."""
    try:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    except AssertionError as error:
        failures.append(f"{name}: {error}")


def _rank_main(rank: int, world_size: int, port: int, out_dir: str, checks: Checks,
               backend: str = "gloo") -> None:
    from pagellm.distributed import parallel_state as ps

    failures: list[str] = []
    try:
        torch.set_num_threads(1)
        if backend == "nccl":
            torch.cuda.set_device(rank)
        ps.init_distributed_environment(world_size, rank, backend, "127.0.0.1", port,
                                        timeout_s=60)
        ps.initialize_model_parallel(world_size)
        checks(rank, failures)
    except Exception:
        failures.append(traceback.format_exc())
    finally:
        ps.destroy_distributed_environment()
    Path(out_dir, f"rank{rank}.txt").write_text("\n".join(failures))


def run_on_gloo_ranks(checks: Checks, tmp_path: Path, world_size: int = 2,
                      backend: str = "gloo", timeout_s: float = 120) -> None:
    """Run ``checks`` on ``world_size`` ranks of ``backend`` ("gloo" on CPU; "nccl": rank r
    on GPU r); AssertionError with every rank's failures (or a rank's exit code) when any
    failed."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_rank_main,
                                 args=(rank, world_size, store.port, str(tmp_path), checks,
                                       backend))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout_s)
        if process.exitcode is None:
            process.kill()
        assert process.exitcode == 0, f"rank exited with {process.exitcode}"
    for rank in range(world_size):
        report = (tmp_path / f"rank{rank}.txt").read_text()
        assert report == "", f"rank {rank}:\n{report}"
