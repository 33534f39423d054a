"""Render :class:`~protobind_codegen.model.FileModel` objects with the jinja2 templates."""

from __future__ import annotations

from functools import lru_cache

from . import __version__
from .model import FileModel


@lru_cache(maxsize=1)
def _template():  # type: ignore[no-untyped-def]
    try:
        import jinja2
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
        raise ImportError("code generation needs jinja2: pip install 'protobind[codegen]'") from exc
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("protobind_codegen", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template("protobind.py.j2")


def render(model: FileModel) -> str:
    """The source of one ``_protobind.py`` module."""
    return str(_template().render(file=model))


GENERATOR_VERSION = __version__
