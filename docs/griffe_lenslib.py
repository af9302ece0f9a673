"""A griffe extension that lets lenslib's docstrings read well in the API reference.

lenslib's docstrings are Google style, written to read well in ``help()`` too. Two habits of
theirs do not survive Markdown as they stand, so mkdocstrings loads this (``mkdocs.yml``):

* Sphinx roles such as ``:func:`logit_lens``` or ``:class:`~lenslib.tuned.recipe.FitRecipe```
  become links to the reference entry when the object has one (a name in ``lenslib.__all__``
  or ``lenslib.plotting.__all__``, or a member of one), and plain code otherwise. Links are
  mkdocs-autorefs references, so ``mkdocs build --strict`` fails if one does not resolve.
* A doctest (``>>>`` lines and their output) would be read as nested block quotes, except in an
  ``Examples:`` section, which griffe parses itself (``Example:``, singular, is an admonition
  whose body is Markdown); it becomes a ``pycon`` code block.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj):`([^`]+)`")
SECTION = re.compile(r"^(\w[\w ]*):\s*$")


class LenslibDocstrings(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        if pkg.name != "lenslib":
            return
        public = _public_paths(pkg)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                text = _fence_doctests(obj.docstring.value)
                obj.docstring.value = ROLE.sub(lambda m: _link(m.group(1), obj, pkg, public), text)


def _public_paths(pkg: griffe.Module) -> dict[str, str]:
    """Canonical path -> the path its reference entry is rendered under."""
    public: dict[str, str] = {}
    for module in (pkg, pkg["plotting"]):
        public[module.path] = module.path
        for name in module.exports or []:
            obj = module[name]
            shown = f"{module.path}.{name}"
            target = obj.final_target if obj.is_alias else obj
            public[shown] = shown
            public[target.path] = shown
    return public


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias and member.path.startswith("lenslib"):
            yield from _walk(member)


def _link(target: str, obj: griffe.Object, pkg: griffe.Module, public: dict[str, str]) -> str:
    title = None
    if "<" in target and target.endswith(">"):  # :func:`text <target>`
        title, target = (part.strip() for part in target[:-1].split("<", 1))
    short = target.startswith("~")
    target = target.lstrip("~").removesuffix("()")
    shown = title or (target.rsplit(".", 1)[-1] if short else target)
    module = obj if obj.is_module else obj.module
    for candidate in (target, f"{module.path}.{target}", f"lenslib.{target}",
                      f"{obj.path}.{target}", f"{obj.parent.path}.{target}" if obj.parent else ""):
        resolved = _resolve(candidate, pkg, public)
        if resolved:
            return f"[`{shown}`][{resolved}]"
    return f"`{shown}`"


def _resolve(path: str, pkg: griffe.Module, public: dict[str, str]) -> str | None:
    """The rendered path of ``path`` (or of the class or module it is a member of), if any."""
    if not path.startswith("lenslib"):
        return None
    if path in public:
        return public[path]
    head, _, member = path.rpartition(".")
    if head in public and public[head] != public.get("lenslib") and public[head] != public.get(
            "lenslib.plotting"):
        try:
            owner = pkg.modules_collection[head]
        except KeyError:
            return None
        target = owner.final_target if owner.is_alias else owner
        if member in target.members and not member.startswith("_"):
            return f"{public[head]}.{member}"
    return None


def _fence_doctests(text: str) -> str:
    """Put ``>>>`` blocks outside Google ``Examples:`` sections into ``pycon`` fences."""
    out: list[str] = []
    lines = text.splitlines()
    in_examples = False
    i = 0
    while i < len(lines):
        line = lines[i]
        header = SECTION.match(line)
        if header and not line.startswith(" "):
            in_examples = header.group(1) == "Examples"  # griffe parses these; "Example:" is prose
        elif line and not line.startswith(" "):
            in_examples = False
        if line.lstrip().startswith(">>>") and not in_examples:
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += [f"{indent}```pycon", *block, f"{indent}```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)
