"""Records what a rank's training loop received from ``PairLoader`` (tests/test_own_trainer.py).

Imported at interpreter start-up by the ranks that have this folder on PYTHONPATH: it wraps
``PairLoader.__iter__`` so that each batch handed to the loop is appended, as one JSON line
(epoch, position in the epoch, keys), to ``$PAIRTRACE_DIR/seen-rank$RANK.jsonl``. The loader
itself is untouched: this only watches. With ``PAIRTRACE_KILL_AT=N``, rank 0 stops when its loop
would receive batch N of epoch 0 and writes ``kill-me``: the test then sends SIGKILL to torchrun
and every process under it, a crash at a known point (rank 0 has checkpointed batches 0…N−1).
"""
import json
import os
import time

if os.environ.get("PAIRTRACE_DIR") and os.environ.get("RANK") is not None:
    from pairforge.pipeline import pair_dataset

    _iter = pair_dataset.PairLoader.__iter__
    _path = os.path.join(os.environ["PAIRTRACE_DIR"], f"seen-rank{os.environ['RANK']}.jsonl")

    def _traced(self):
        for batch in _iter(self):
            with open(_path, "a") as f:
                f.write(json.dumps({"epoch": self.dataset.epoch, "batch": self.dataset.batches - 1,
                                    "keys": list(batch["key"])}) + "\n")
            kill_at = os.environ.get("PAIRTRACE_KILL_AT")
            if kill_at and os.environ["RANK"] == "0" and (self.dataset.epoch, self.dataset.batches - 1) == (0, int(kill_at)):
                open(os.path.join(os.environ["PAIRTRACE_DIR"], "kill-me"), "w").close()
                while True:
                    time.sleep(1)
            yield batch

    pair_dataset.PairLoader.__iter__ = _traced
