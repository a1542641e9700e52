"""Build and run modelhost's container image with Debian's podman, as DEPLOY-NOTES.md found works
on these machines: runc with the cgroupfs manager, overlay storage under one folder of its own,
default ulimits lowered below the sandbox's hard limits, host networking, no registry.

All of podman's state lives under ``STATE`` (``~/.cache/modelhost-podman`` unless
``MODELHOST_PODMAN_STATE`` says otherwise) and is kept between runs, so the base image (from
``debootstrap --variant=minbase bookworm``, about a minute) and unchanged build layers are made
once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

STATE = Path(os.environ.get("MODELHOST_PODMAN_STATE", Path.home() / ".cache" / "modelhost-podman"))
BASE_IMAGE = "localhost/modelhost-base:bookworm"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Where pip on this machine finds the CPU build of torch that lies on its disk (its find-links):
# PyPI's own Linux torch is a CUDA build of several GB.
WHEEL_DIRS = [Path(p) for p in os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()
              if "://" not in p]
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


def _containers_conf(state: Path) -> str:
    return f"""[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
tmp_dir = "{state}/libpodtmp"
[network]
network_config_dir = "{state}/etc/networks"
"""


def _storage_conf(state: Path) -> str:
    return f"""[storage]
driver = "overlay"
graphroot = "{state}/storage"
runroot = "{state}/runroot"
"""


@dataclass
class Podman:
    """``podman`` with its configuration and storage under ``state``."""

    state: Path = STATE

    def __post_init__(self) -> None:
        for sub in ("etc", "tmp", "libpodtmp"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        (self.state / "etc" / "containers.conf").write_text(_containers_conf(self.state))
        (self.state / "etc" / "storage.conf").write_text(_storage_conf(self.state))

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ,
                "CONTAINERS_CONF": str(self.state / "etc" / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.state / "etc" / "storage.conf"),
                "TMPDIR": str(self.state / "tmp")}

    def run(self, *args: str, check: bool = True, timeout: float = 600,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True,
                                timeout=timeout, input=stdin.decode() if stdin else None,
                                text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def has_image(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def ensure_base_image(self) -> None:
        """Debian bookworm minbase from the mirror apt uses, imported as ``BASE_IMAGE``."""
        if self.has_image(BASE_IMAGE):
            return
        rootfs = self.state / "rootfs"
        if not rootfs.exists():
            partial = self.state / "rootfs.partial"
            shutil.rmtree(partial, ignore_errors=True)
            subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(partial),
                            _debian_mirror()], check=True, capture_output=True, timeout=900)
            partial.rename(rootfs)
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for path in (rootfs / leftover).glob("*"):
                if path.is_file():
                    path.unlink()
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout,
                                  env=self.env, capture_output=True, text=True, timeout=600)
        tar.wait()
        assert imported.returncode == 0, imported.stderr
        shutil.rmtree(rootfs)  # the image now holds it

    def build(self, context: Path, tag: str, *build_args: str) -> float:
        """Build ``context``'s Containerfile on the base image; returns the seconds it took."""
        self.ensure_base_image()
        previous = self.image_id(tag)
        started = time.monotonic()
        self.run("build", "--format", "docker", "--network", "host", "--layers",
                 "-v", f"{HOST_CA}:/run/host-ca.crt:ro",
                 "--build-arg", f"BASE={BASE_IMAGE}",
                 "--build-arg", "PIP_CERT=/run/host-ca.crt",
                 *_torch_wheel_args(),
                 *(a for arg in build_args for a in ("--build-arg", arg)),
                 "-f", str(context / "Containerfile"), "-t", tag, str(context), timeout=3000)
        seconds = time.monotonic() - started
        if previous and previous != self.image_id(tag):  # keep the cache folder from growing
            self.run("rmi", previous, check=False)
        return seconds

    def image_id(self, name: str) -> str | None:
        found = self.run("image", "inspect", "--format", "{{.Id}}", name, check=False)
        return found.stdout.strip() if found.returncode == 0 else None

    def remove_container(self, name: str) -> None:
        self.run("rm", "--force", "--time", "0", name, check=False)


def _torch_wheel_args() -> list[str]:
    """Build options that give the converter stage the CPU torch wheel on this machine's disk
    (for the image's Python 3.11); none when there is none, and the Containerfile's default,
    PyTorch's CPU index, applies."""
    for folder in WHEEL_DIRS:
        wheels = sorted(folder.glob("torch-*+cpu-cp311-cp311-*x86_64.whl"))
        if wheels:
            return ["-v", f"{folder}:/run/wheels:ro",
                    "--build-arg", f"TORCH_PIP=/run/wheels/{wheels[-1].name}"]
    return []


def _debian_mirror() -> str:
    for line in DEBIAN_SOURCES.read_text().splitlines():
        if line.startswith("URIs:"):
            return line.split()[1]
    return "http://deb.debian.org/debian"
