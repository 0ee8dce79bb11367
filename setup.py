"""Package discovery for the top-level layout: hf_vlp/, modeling/ -> hf_vlp.modeling, conversion/ -> hf_vlp.conversion.

Metadata and dependencies live in setup.cfg; only the folder mapping needs code, so that a new architecture folder
is picked up without editing a package list.
"""

from setuptools import find_packages, setup

MAPPED = {"hf_vlp.modeling": "modeling", "hf_vlp.conversion": "conversion"}

packages = find_packages(include=["hf_vlp", "hf_vlp.*"])
package_dir = {"hf_vlp": "hf_vlp"}
for package, folder in MAPPED.items():
    packages.append(package)
    packages += [f"{package}.{sub}" for sub in find_packages(folder)]
    package_dir[package] = folder

setup(packages=packages, package_dir=package_dir, include_package_data=True)
