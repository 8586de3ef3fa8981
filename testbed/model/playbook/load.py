"""Loading: read a playbook file (or text), check it, and expand every scenario at once."""

from __future__ import annotations

from pathlib import Path

from pydantic import PrivateAttr

from testbed.errors import InputError
from testbed.model.playbook.checks import check_keys, check_matrix_shape, check_playbook
from testbed.model.playbook.expand import expand
from testbed.model.playbook.spec import PlaybookSpec, Scenario
from testbed.model.pydantic_errors import input_keys
from testbed.model.yamlsrc import PathKey, YamlDoc, load_yaml_file, load_yaml_text, validate

EMPTY_HINT = "a playbook needs name and steps"


class Playbook(PlaybookSpec):
    """A playbook as written: checked, not yet expanded. `scenarios()` expands it."""

    _doc: YamlDoc | None = PrivateAttr(default=None)
    _expanded: list[Scenario] | None = PrivateAttr(default=None)

    def scenarios(self) -> list[Scenario]:
        """Every scenario, typed: the matrix (in axis order), then the explicit ones."""
        if self._expanded is None:
            doc = self._doc or YamlDoc(file="<playbook>", data=self.model_dump(by_alias=True))
            if self._doc is None:
                check_playbook(self, doc)
                self._doc = doc
            self._expanded = expand(self, doc)
        return list(self._expanded)


def load_playbook(path: str | Path) -> Playbook:
    """Read, check and expand a playbook; any problem is an InputError naming file and line."""
    return _from_doc(load_yaml_file(path, keep_text=_is_name, empty_hint=EMPTY_HINT))


def parse_playbook(text: str, file: str = "<playbook>") -> Playbook:
    """As `load_playbook`, from text (`file` is the name errors use)."""
    return _from_doc(load_yaml_text(text, file, keep_text=_is_name, empty_hint=EMPTY_HINT))


def _from_doc(doc: YamlDoc) -> Playbook:
    file = doc.file
    if not isinstance(doc.data, dict):
        raise InputError(
            "a playbook is a mapping with name, steps and optionally vars, matrix, scenarios",
            file=file,
            line=1,
        )
    check_keys(doc, doc.data, (), input_keys(Playbook, skip=("source",)), "playbook")
    check_matrix_shape(doc, doc.data.get("matrix"))
    pb = validate(Playbook, doc)
    pb.source = file
    check_playbook(pb, doc)
    pb._doc = doc
    pb.scenarios()  # every scenario is checked now, not halfway through a run
    return pb


def _is_name(path: PathKey) -> bool:
    """Values that are names, kept as written: the playbook's, scenarios', exclude's."""
    return (
        path == ("name",)
        or (len(path) == 3 and path[0] == "exclude")
        or (len(path) == 3 and path[0] == "scenarios" and path[2] == "name")
    )
