"""One rank of the 2-process metrics test in test_multilabel.py (a plain subprocess: no fork, no pickling).

``python ddp_metrics_worker.py RANK WORLD_SIZE INIT_METHOD OUT_DIR``
"""

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

spec = importlib.util.spec_from_file_location("multilabel_tests", Path(__file__).with_name("test_multilabel.py"))
tests = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tests)

if __name__ == "__main__":
    tests._ddp_worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
