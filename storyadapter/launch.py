"""`python -m storyadapter.launch key=value ...`: render a story (Hydra config, Ray engine).

Config errors are caught before Hydra runs, so users get one line naming the key, not a stack trace.
"""

from __future__ import annotations

import re
import shlex
import signal
import sys
from pathlib import Path

from .errors import UserError, environment_error, report
from .rundir.guard import CONFIG_FILE


def conf_dir() -> str:
    """The Hydra config tree: shipped inside the package when installed, `conf/` beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise UserError(f"{here}: the conf/ config tree is missing from this installation")


def fail(message: str, code: int = 2) -> None:
    report(message)
    sys.exit(code)


def _one_line(exc: BaseException) -> str:
    """The innermost OmegaConf/Hydra message, prefixed by the config key it names."""
    from omegaconf.errors import OmegaConfBaseException

    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    for e in (inner, exc):
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            return f"{e.full_key}: {str(e.msg if hasattr(e, 'msg') else e).splitlines()[0]}"
    text = " ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


def edit_overrides(argv: list[str]) -> list[str]:
    """`edit=true` as users type it is `edit.apply=true`: `edit` is a config node (edit.apply, edit.refine), and
    Hydra cannot set a node to a boolean."""
    return [f"edit.apply={a.partition('=')[2]}" if a.startswith("edit=") else a for a in argv]


def validate_overrides(argv: list[str]) -> None:
    """Compose the config for every value of every sweep and check it (spec.py), so any bad key or value fails
    here, in one line, before anything starts."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from . import spec
    from .config import register

    register()
    overrides = _parse(edit_overrides([a for a in argv if not a.startswith("-")]))
    base = [o.input_line for o in overrides if not o.is_sweep_override()]
    variants = [base] + [
        base + [f"{o.get_key_element()}={value}"]
        for o in overrides if o.is_sweep_override()
        for value in o.sweep_string_iterator()
    ]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            for variant in variants:
                run = spec.from_config(compose(config_name="config", overrides=variant))
                # The same model without the user's model.* keys: what the preset sets itself is not the user's doing.
                preset = compose(config_name="config", overrides=[o for o in variant if not _sets_model_key(o)])
                spec.check_model_keys(run.model, spec.model_spec(preset.model))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - composition errors come in many types; all are the user's
        raise UserError(_unknown_option(exc) or _unknown_key(exc) or f"config: {_one_line(exc)}") from None
    finally:
        GlobalHydra.instance().clear()


def _parse(args: list[str]) -> list:
    """Hydra's overrides; a value its grammar refuses is named with the quoting that makes it a plain string."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in args:
        try:
            parser.parse_override(arg)
        except Exception as exc:  # noqa: BLE001 - Hydra raises several parse error types
            raise UserError(_quoting_hint(arg) or f"bad override {arg}: {_one_line(exc)}") from None
    return parser.parse_overrides(args)


def _quoting_hint(arg: str) -> str | None:
    """story.style=(No style) -> how to pass the value as a string: Hydra's quotes inside the shell's."""
    key, eq, value = arg.partition("=")
    if not eq or not key or not value:
        return None
    quoted = f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    shell = f'"{quoted}"' if not set('"$`\\!') & set(quoted) else shlex.quote(quoted)
    return f"{arg}: not a value Hydra's override grammar reads; quote it, in the shell: {shell}"


def _sets_model_key(override: str) -> bool:
    key = override.lstrip("+~").partition("=")[0]
    return key.startswith("model.")


def _unknown_option(exc: Exception) -> str | None:
    """'method=foo: expected one of hybrid, story_adapter, storydiffusion' for a config group option that does
    not exist, instead of Hydra's message with its search path."""
    found = re.search(r"Could not find '([\w-]+)/([^']+)'\s+Available options in '[\w-]+':\s+(.*?)\s*Config search path",
                      str(exc), re.S)
    if not found:
        return None
    group, name, options = found.groups()
    return f"{group}={name}: expected one of {', '.join(options.split())}"


def _unknown_key(exc: Exception) -> str | None:
    """'render.stpes: no such key; did you mean render.steps?' for a key the schema does not have."""
    from . import spec

    found = re.search(r"Could not override '([^']+)'|Could not delete from config\. '([^']+)' does not exist", str(exc))
    if not found or (found.group(1) or found.group(2)).startswith("hydra."):
        return None
    return spec.unknown_key(found.group(1) or found.group(2))


def compose_config(overrides: list[str]):
    """The resolved config for `overrides`, outside Hydra's app runner (tests, notebooks)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = edit_overrides(overrides)
    validate_overrides(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def editing(cfg) -> bool:
    """Whether the config asks for an edit of a finished render (edit=true) rather than a render."""
    return bool(cfg.edit.apply)


def _task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .logs import quiet_libraries
    from .render_story import render_story
    from .edit_story import edit_story

    quiet_libraries()
    hc = HydraConfig.get()
    # Multirun: each job renders into its own numbered folder under output_dir.
    out_dir = Path(hc.runtime.output_dir) if hc.mode == RunMode.MULTIRUN else Path(cfg.output_dir)
    try:
        (edit_story if editing(cfg) else render_story)(cfg, out_dir)
    except UserError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        if not (out_dir / CONFIG_FILE).is_file():
            fail(f"interrupted before anything was written to output_dir={out_dir}; nothing to resume", 130)
        again = "edit=true" if editing(cfg) else "resume=true"
        fail(f"interrupted; finished frames are kept: rerun with {again} output_dir={out_dir}", 130)
    except Exception as exc:  # noqa: BLE001 - only the environment's failures are turned into one line
        err = environment_error(exc, out_dir)
        if err is None:
            raise
        fail(str(err), err.exit_code)


def main() -> None:
    import hydra

    from .config import register

    # Ctrl-C and the web UI's cancel (SIGINT) stop the render cleanly even when the parent started us with
    # SIGINT ignored (a background `&` job), which Python would otherwise keep.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv[1:] = edit_overrides(sys.argv[1:])  # before Hydra reads them
    try:
        validate_overrides(sys.argv[1:])
        register()
        entry = hydra.main(config_path=conf_dir(), config_name="config", version_base="1.3")(_task)
    except UserError as exc:
        fail(str(exc), exc.exit_code)
    entry()


if __name__ == "__main__":
    main()
