"""Write the image's requirement files from pyproject.toml, so that the layers that install them are
rebuilt only when the requirements change (not on every change of pyproject.toml).

usage: python3 requirements.py PYPROJECT OUTDIR EXTRAS   (EXTRAS: comma-separated, may be empty)
writes OUTDIR/app.txt (the dependencies and EXTRAS) and OUTDIR/train.txt (the `train` extra)."""

import sys
import tomllib
from pathlib import Path


def main(pyproject: str, outdir: str, extras: str) -> None:
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    optional = project["optional-dependencies"]
    app = list(project["dependencies"])
    for extra in filter(None, (e.strip() for e in extras.split(","))):
        app += optional[extra]
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "app.txt").write_text("\n".join(app) + "\n")
    (out / "train.txt").write_text("\n".join(optional["train"]) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
