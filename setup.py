"""
Packaging for smobility.

The twistd plugin file lives in C{twisted/plugins/} with no C{__init__.py} in
C{twisted/} or C{twisted/plugins/}: listing C{"twisted.plugins"} as a package
makes setuptools copy just the modules in that directory (it warns that the
package has no C{__init__.py}, which is what we want), and Twisted's own
C{twisted/plugins/__init__.py} extends its C{__path__} to every C{twisted/plugins}
directory on C{sys.path}.  Shipping either C{__init__.py} would overwrite
Twisted's own on install.  C{tests/test_packaging.py} checks the built wheel.
"""

from __future__ import annotations

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def _version() -> str:
    """Read C{__version__} from C{smobility/__init__.py} without importing it."""
    text = (HERE / "smobility" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("smobility/__init__.py has no __version__")
    return match.group(1)


setup(
    name="smobility",
    version=_version(),
    description="Secure IP mobility: Mobile IPv4 registration, IKEv2 and ESP, on Twisted",
    long_description=(HERE / "README.md").read_text(encoding="utf-8")
    if (HERE / "README.md").exists()
    else "Secure IP mobility for roaming clients.",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["smobility", "smobility.*"]) + ["twisted.plugins"],
    include_package_data=False,
    # The lab's own DHCP client script (never a stock one: see doc/lab.md).
    package_data={"smobility.lab": ["udhcpc-script.sh"]},
    install_requires=[
        "twisted>=24.7.0",
        "pyopenssl>=24.0.0",
        "cryptography>=42.0.0",
        "service_identity>=24.1.0",
        "pyroute2>=0.9",
        "socksio>=1.0.0",
        "bcrypt>=4.1.0",
    ],
    # The console script smobility-ctl = smobility.ctl:main goes here once
    # smobility/ctl.py exists.
    entry_points={"console_scripts": ["smobility-ctl = smobility.ctl:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Networking",
    ],
    zip_safe=False,
)
