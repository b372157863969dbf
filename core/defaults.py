"""What a model folder recommends to the app: the optional `lens_defaults.json` beside model_index.json.

    {"settings":   {"guidance_scale": 3.0},              # Settings fields the page starts from
     "notes":      {"guidance_scale": "this model: 3",   # shown under that setting's control
                    "img2img": {"scheduler": "..."},     # a tab of DEMO_SETTINGS: its own notes, in place of those
                    "guided": {"mode": "..."}},          # ... the guidance tab's also on its gradient
     "guidance":   {"scale": 20.0},                      # Guidance fields the guidance tab starts from
     "embeddings": ["embeddings/teal.safetensors"],      # learned tokens the text lab offers, beside the file
     "examples":   {"txt2img": [{"prompt": "a red circle", "negative_prompt": "", "guidance_scale": 3.0}]}}

Every part is optional. The file is checked when the model loads: a key or value the app would not use is an
error naming it, not a setting silently ignored.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from core.guidance import Guidance
from core.sampler import Settings

FILE = "lens_defaults.json"

# Each tab's example record: its fields, in the order of the controls the tab's examples fill.
EXAMPLE_FIELDS = {
    "txt2img": ("prompt", "negative_prompt", "guidance_scale"),
    "guided": ("prompt", "loss", "scale", "color", "start", "guidance_scale"),
    "swap_token": ("prompt", "token", "replacement"),
    "mix_tokens": ("prompt", "token", "word_a", "word_b", "weight"),
    "mix_prompts": ("prompt_a", "prompt_b", "factor"),
    "textual_inversion": ("prompt", "token"),  # token: the word the learned token replaces, or ""
    "img2img": ("prompt", "strength"),  # beside ui's example images, in their order
}
OPTIONAL_FIELDS = {"guided": ("start", "guidance_scale")}  # a record may leave these out: the tab's default then

# Settings a tab starts from where the notebook's demo of it ran with its own (a model folder's settings still win):
# its guidance and image-to-image demos run 50 LMS steps at CFG 8.
DEMO_SETTINGS = {"guided": {"steps": 50, "guidance_scale": 8.0}, "img2img": {"steps": 50, "guidance_scale": 8.0}}

NOTEBOOK_EXAMPLES = {  # the Deep Dive notebook's prompts, for real SD weights; rows in EXAMPLE_FIELDS' order
    "txt2img": (("A watercolor painting of an otter", "", 7.5),
                ("A picture of a puppy", "", 7.5),
                ("A colorful dancer, nat geo photo", "blue", 7.5)),
    "guided": (("A campfire (oil on canvas)", "blue", 200, "#0000ff", 0, 8.0),  # the notebook's guidance demo: CFG 8
               ("A watercolor painting of an otter", "color", 200, "#0000ff", 0, 8.0)),
    "swap_token": (("A picture of a puppy", "puppy", "cat"),
                   ("A watercolor painting of an otter", "otter", "panda")),
    "mix_tokens": (("A picture of a puppy", "puppy", "cat", "panda", 0.4),),
    "mix_prompts": (("A mouse", "A leopard", 0.5),),
    "textual_inversion": (("A picture of a puppy", "puppy"),),
    "img2img": (("A colorful dancer, nat geo photo", 0.8),
                ("An oil painting of a man on a bench", 0.6),
                ("A watercolor painting of an otter", 0.5)),
}


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class ModelDefaults:
    """A model's recommendations, checked; `ModelDefaults()` is a model that recommends nothing."""

    settings: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    notes: Mapping[str, str | Mapping[str, str]] = field(default_factory=lambda: _frozen({}))
    guidance: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    embeddings: tuple[Path, ...] = ()
    examples: Mapping[str, tuple[tuple, ...]] = field(default_factory=lambda: _frozen({}))

    @classmethod
    def read(cls, folder: Path) -> ModelDefaults:
        """The folder's lens_defaults.json, checked; no file recommends nothing. ValueError names a bad entry."""
        path = folder / FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        return cls.parse(data, folder, where=str(path))

    @classmethod
    def parse(cls, data: Any, folder: Path, where: str = FILE) -> ModelDefaults:
        _keys(where, data, ("settings", "notes", "guidance", "embeddings", "examples"))
        notes = _notes(f"{where} notes", data.get("notes", {}))
        settings = _values(f"{where} settings", data.get("settings", {}), Settings())
        guidance = _values(f"{where} guidance", data.get("guidance", {}), Guidance())
        tabs = {tab: {**_fields_of(Settings()), **DEMO_SETTINGS.get(tab, {}), **settings, **_fields_of(Guidance()),
                      **guidance} for tab in EXAMPLE_FIELDS}
        return cls(settings=_frozen(settings), notes=_frozen(notes), guidance=_frozen(guidance),
                   embeddings=_embeddings(where, data.get("embeddings", []), folder),
                   examples=_frozen(_examples(where, data.get("examples", {}), tabs)))

    def note(self, setting: str, tab: str | None = None) -> str | None:
        """The note under a setting's control on `tab`: the tab's own, else the one for every tab."""
        own = self.notes.get(tab, {}) if tab in DEMO_SETTINGS else {}
        return own.get(setting, self.notes.get(setting))

    def settings_for(self, tab: str | None = None) -> dict[str, Any]:
        """The Settings fields a tab starts from: its notebook demo's (DEMO_SETTINGS), then the folder's."""
        return {**DEMO_SETTINGS.get(tab, {}), **self.settings}

    def examples_for(self, tab: str) -> list[list]:
        """The tab's example rows (the model's, else the notebook's), each in EXAMPLE_FIELDS' order."""
        return [list(row) for row in self.examples.get(tab, NOTEBOOK_EXAMPLES[tab])]


def _names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(kind))


def _fields_of(instance: Any) -> dict:
    return {f.name: getattr(instance, f.name) for f in fields(instance)}


def _keys(where: str, data: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object with keys from {', '.join(allowed)}, got {data!r}")
    for key in data:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")


def _values(where: str, data: Any, plain: Any) -> dict:
    """`data`'s entries, each a field of the dataclass `plain` with a value of that field's default's type."""
    defaults = _fields_of(plain)
    _keys(where, data, tuple(name for name, value in defaults.items() if isinstance(value, (int, float, str))))
    _typed(where, data, defaults)
    return {key: float(value) if type(defaults[key]) is float else value for key, value in data.items()}


def _typed(where: str, data: dict, plain: dict) -> None:
    """ValueError unless each value has the type of `plain`'s (an int will do for a float), and a float is finite."""
    for key, value in data.items():
        kind = type(plain[key])
        fits = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not fits or isinstance(value, bool) or (kind is float and not math.isfinite(value)):
            raise ValueError(f"{where}: {key} must be {kind.__name__}, got {value!r}")


GUIDANCE_NOTES = ("mode",)  # the Guidance fields whose control shows a note


def _notes(where: str, data: Any) -> dict:
    """Setting -> note for every tab, and for a tab of DEMO_SETTINGS (which starts from settings of its own) an object
    of its own notes."""
    _keys(where, data, _names(Settings) + tuple(DEMO_SETTINGS))
    for key, value in data.items():
        if key in DEMO_SETTINGS:  # the guidance tab's notes may also speak of its gradient ("mode")
            _keys(f"{where} {key}", value, _names(Settings) + (GUIDANCE_NOTES if key == "guided" else ()))
        for setting, note in (value.items() if key in DEMO_SETTINGS else [(key, value)]):
            if not isinstance(note, str):
                tab = f" {key}:" if key in DEMO_SETTINGS else ""
                raise ValueError(f"{where}{tab} {setting} must be text, got {note!r}")
    return {key: _frozen(value) if key in DEMO_SETTINGS else value for key, value in data.items()}


def _embeddings(where: str, names: Any, folder: Path) -> tuple[Path, ...]:
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"{where} embeddings must be a list of file names, got {names!r}")
    paths = tuple(folder / name for name in names)
    for path in paths:
        if not path.is_file():
            raise ValueError(f"{where} embeddings: there is no file {path}")
    return paths


def _examples(where: str, data: Any, tabs: dict[str, dict]) -> dict[str, tuple[tuple, ...]]:
    """The records as rows; a field left out takes the tab's default (`tabs`: each tab's Settings and Guidance
    fields)."""
    _keys(f"{where} examples", data, tuple(EXAMPLE_FIELDS))
    rows = {}
    for tab, records in data.items():
        names, page = EXAMPLE_FIELDS[tab], tabs[tab]
        if not isinstance(records, list) or not records:
            raise ValueError(f"{where} examples: {tab} must be a non-empty list of records, got {records!r}")
        optional = {name: page[name] for name in OPTIONAL_FIELDS.get(tab, ())}
        for record in records:
            if not isinstance(record, dict) or not set(names) - set(optional) <= set(record) <= set(names):
                left_out = f" ({', '.join(optional)} may be left out)" if optional else ""
                raise ValueError(f"{where} examples: each {tab} record has exactly the keys "
                                 f"{', '.join(names)}{left_out}, got {record!r}")
            _typed(f"{where} examples: {tab}", {key: value for key, value in record.items() if key in page}, page)
        rows[tab] = tuple(tuple({**optional, **record}[name] for name in names) for record in records)
    return rows
