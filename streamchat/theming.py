"""Themes are data: TOML files — built in (the top-level ``themes/`` folder, shipped in the package)
or a person's own in ``<config dir>/themes/NAME.toml`` (which wins over a built-in of the same name).

A theme has ``[colors]`` (the TUI's Textual theme: primary, secondary, accent, foreground,
background, surface, panel, success, warning, error), ``[[confidence]]`` bands (``min``, ``color``,
``label``: a token whose confidence is at least ``min`` takes the colour of the highest band it
reaches) and ``[stages.NAME]`` (``color``, ``marker``) for progressive answers. See
``themes/dark.toml``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.errors import ConfigError

__all__ = ["Theme", "Band", "Stage", "load_theme", "theme_names", "BUILTIN_DIR", "DEFAULT_THEME"]

BUILTIN_DIR = Path(__file__).parent / "themes"
DEFAULT_THEME = "dark"
COLOR_KEYS = ("primary", "secondary", "accent", "foreground", "background", "surface", "panel",
              "success", "warning", "error")
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True, slots=True)
class Band:
    min: float
    color: str
    label: str


@dataclass(frozen=True, slots=True)
class Stage:
    color: str
    marker: str


@dataclass(frozen=True)
class Theme:
    name: str
    dark: bool
    colors: dict[str, str]
    bands: tuple[Band, ...]
    stages: dict[str, Stage] = field(default_factory=dict)
    source: Path | None = None

    def band(self, confidence: float | None) -> Band | None:
        """The band a confidence falls in (None: no confidence, no band)."""
        if confidence is None:
            return None
        chosen = None
        for band in self.bands:  # sorted by min
            if confidence >= band.min:
                chosen = band
        return chosen or self.bands[0]

    def stage(self, name: str | None) -> Stage | None:
        return self.stages.get(name) if name else None


def _user_dir() -> Path:
    from .config import config_dir

    return config_dir() / "themes"


def theme_names() -> list[str]:
    """Every theme there is: built-in and the person's own."""
    names = {p.stem for p in BUILTIN_DIR.glob("*.toml")}
    user = _user_dir()
    if user.is_dir():
        names |= {p.stem for p in user.glob("*.toml")}
    return sorted(names)


def load_theme(name: str | None = None) -> Theme:
    """The theme called ``name`` (default: dark). A bad file fails with one line naming the problem."""
    name = name or DEFAULT_THEME
    for folder in (_user_dir(), BUILTIN_DIR):
        path = folder / f"{name}.toml"
        if path.is_file():
            return _parse(path)
    raise ConfigError(f"unknown theme {name!r}: choose one of {', '.join(theme_names())}")


def _parse(path: Path) -> Theme:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read theme {path}: {exc}") from exc

    def fail(what: str) -> ConfigError:
        return ConfigError(f"theme {path}: {what}")

    def color(value: Any, key: str) -> str:
        if not isinstance(value, str) or not _HEX.match(value):
            raise fail(f"{key} must be a colour like \"#1a2b3c\", not {value!r}")
        return value

    known = {"name", "dark", "colors", "confidence", "stages"}
    for key in data:
        if key not in known:
            raise fail(f"unknown key {key!r} (known: {', '.join(sorted(known))})")
    colors = data.get("colors", {})
    if not isinstance(colors, dict):
        raise fail("[colors] must be a table")
    for key in colors:
        if key not in COLOR_KEYS:
            raise fail(f"unknown colour colors.{key} (known: {', '.join(COLOR_KEYS)})")
    if "primary" not in colors:
        raise fail("colors.primary is required")
    checked = {key: color(value, f"colors.{key}") for key, value in colors.items()}

    raw_bands = data.get("confidence", [])
    if not isinstance(raw_bands, list) or not raw_bands:
        raise fail("needs at least one [[confidence]] band")
    bands = []
    for i, band in enumerate(raw_bands):
        where = f"confidence band {i + 1}"
        if not isinstance(band, dict) or set(band) - {"min", "color", "label"}:
            raise fail(f"{where} takes min, color and label")
        low = band.get("min")
        if not isinstance(low, (int, float)) or not 0 <= low <= 1:
            raise fail(f"{where}: min must be a number from 0 to 1")
        bands.append(Band(float(low), color(band.get("color"), f"{where} color"), str(band.get("label", ""))))
    bands.sort(key=lambda b: b.min)

    stages = {}
    raw_stages = data.get("stages", {})
    if not isinstance(raw_stages, dict):
        raise fail("[stages] must be a table of tables")
    for stage_name, stage in raw_stages.items():
        if not isinstance(stage, dict) or set(stage) - {"color", "marker"}:
            raise fail(f"stages.{stage_name} takes color and marker")
        stages[stage_name] = Stage(color(stage.get("color"), f"stages.{stage_name}.color"), str(stage.get("marker", "")))

    dark = data.get("dark", True)
    if not isinstance(dark, bool):
        raise fail("dark must be true or false")
    return Theme(name=str(data.get("name", path.stem)), dark=dark, colors=checked, bands=tuple(bands),
                 stages=stages, source=path)
