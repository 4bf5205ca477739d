"""Which import first brings torch into a process: the server front end's modules, then the tokenizer's class."""
import importlib
import sys
import time
import traceback

first: list[str] = []


class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not first:
            first.extend(f"{f.filename}:{f.lineno} {f.line}" for f in traceback.extract_stack()[:-1]
                         if "importlib" not in f.filename)
        return None


sys.meta_path.insert(0, Watch())
for mod in sys.argv[1:]:
    t = time.perf_counter()
    importlib.import_module(mod)
    print(f"import {mod}: {time.perf_counter() - t:.2f} s; torch loaded: {'torch' in sys.modules}")
    if first:
        print("  first torch import from:\n    " + "\n    ".join(first[-12:]))
        first.clear()
        first.append("done")
