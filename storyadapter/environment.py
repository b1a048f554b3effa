"""What a render ran with: the versions of the libraries that compute its pixels, and the device.

Recorded in config.yaml beside the fingerprint, never in it: a resume on other versions is allowed (the same
settings give the same picture, up to the last bits of some values), and says so in one warning line.
"""

from __future__ import annotations

from importlib import metadata

# The libraries whose kernels and defaults reach the pixels.
PACKAGES = ("torch", "diffusers", "transformers", "peft", "ray")


def package_versions() -> dict[str, str]:
    """Installed versions, read from package metadata: importing torch here would cost seconds (and the
    driver side never imports it)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def describe(versions: dict[str, str], device: str) -> dict:
    return {"versions": dict(versions), "device": device}


def differences(saved: dict | None, now: dict) -> str | None:
    """One line naming what differs between a render's recorded environment and this one, or None.

    A render from before environments were recorded has none: nothing to compare, nothing to say."""
    if not saved:
        return None
    old_versions, new_versions = saved.get("versions", {}), now.get("versions", {})
    changed = [f"{name} {old_versions.get(name, '?')} -> {new_versions.get(name, '?')}"
               for name in sorted(set(old_versions) | set(new_versions))
               if old_versions.get(name) != new_versions.get(name)]
    if saved.get("device") != now.get("device"):
        changed.append(f"device {saved.get('device')!r} -> {now.get('device')!r}")
    return ", ".join(changed) or None
