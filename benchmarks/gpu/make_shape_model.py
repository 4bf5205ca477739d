"""Make a dummy-weights model folder: a config.json of the given shape plus a small tokenizer.

Benchmarks feed token ids and do not detokenize, so any tokenizer will do.
"""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from tiny_models import build_tokenizer  # noqa: E402

cfg, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
shutil.copy(cfg, out / "config.json")
build_tokenizer(out)
print(out)
