"""pyproject.toml's requirements for the image build, so the versions live in one place.

    python3 deploy/image/requirements.py torch            -> the torch pin (torch==X.Y.Z)
    python3 deploy/image/requirements.py EXTRA [EXTRA...] -> every other dependency plus those extras', one a line

The image installs these before copying the sources, so a code edit does not reinstall them.
"""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path("pyproject.toml").read_text())["project"]  # run from the folder holding it
torch = [r for r in project["dependencies"] if r.replace(" ", "").startswith("torch==")]
if sys.argv[1:] == ["torch"]:
    print(torch[0])
else:
    rest = [r for r in project["dependencies"] if r not in torch]
    for extra in sys.argv[1:]:
        rest += project["optional-dependencies"][extra]
    print("\n".join(rest))
