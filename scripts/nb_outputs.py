"""Print a notebook's text outputs (for reviewing an executed chapter in a terminal)."""
import sys

import nbformat

for path in sys.argv[1:]:
    nb = nbformat.read(path, 4)
    print(f"##### {path}")
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                print(o["text"][:3000])
            elif o.get("output_type") == "error":
                print("ERROR", o["ename"], o["evalue"])
            elif "data" in o:
                d = o["data"]
                print("[png]" if "image/png" in d else d.get("text/plain", "")[:3000])
