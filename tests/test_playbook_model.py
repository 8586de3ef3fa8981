"""Playbook model: matrix expansion, variables, typed steps, -k, and errors that point home.

Pure and fast: no lab, no system access. Bad-input fixtures live in
tests/data/playbooks/; each marks the line its error must name with "# error here".
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from testbed.errors import InputError
from testbed.model.playbook import (
    Condition,
    ConnectClientStep,
    ExpectStep,
    MigrateStep,
    Playbook,
    Scenario,
    ShapeStep,
    StartGuestStep,
    Trigger,
    UnsetVariable,
    UpStep,
    WaitStep,
    load_playbook,
    parse_playbook,
    scenario_rows,
    substitute,
)
from testbed.model.profile import LinkProfile
from testbed.runner.select import select

DATA = Path(__file__).resolve().parent / "data" / "playbooks"

FULL = """\
name: bug-884631
description: the client connects late, or the destination is slow to reach
topology: topologies/local.yaml
vars:
  bandwidth: 20
  dst_delay: 0ms
  connect: before
  guard: false
matrix:
  case:
    late-connect: {connect: "at 3s"}
    slow-dst: {connect: before, dst_delay: 1000ms}
  fix:
    off: {guard: false, expect: switch-host}
    on: {guard: true, expect: seamless}
name_format: "{case}/fix-{fix}"
exclude:
  - {case: slow-dst, fix: on}
scenarios:
  - name: baseline
    vars: {connect: before, expect: seamless}
steps:
  - up: {}
  - shape: {from: client, to: dst, network: display, delay: "{dst_delay}", both_ways: false}
  - start_guest: {guest: vm, dirty_rate: 0, fill: 64MiB}
  - connect_client: {client: client, guest: vm, when: "{connect}"}
  - migrate:
      guest: vm
      to: dst
      bandwidth: "{bandwidth}"
      guard: "{guard}"
      wait: false
      timeout: 180s
      max_downtime: 300ms
  - wait: {until: migration_done, timeout: 180s}
  - shape: {from: client, to: dst, network: display, clear: true}
  - expect: {outcome: "{expect}", usbredir: migrated}
"""


def write(tmp_path: Path, text: str, name: str = "pb.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def by_name(scenarios: list[Scenario]) -> dict[str, Scenario]:
    return {s.name: s for s in scenarios}


@pytest.fixture
def full(tmp_path: Path) -> list[Scenario]:
    return load_playbook(write(tmp_path, FULL)).scenarios()


# -- expansion ------------------------------------------------------------------------------


def test_matrix_expands_into_named_scenarios_minus_exclude_plus_explicit(
    full: list[Scenario],
) -> None:
    assert [s.name for s in full] == [
        "late-connect/fix-off",
        "late-connect/fix-on",
        "slow-dst/fix-off",
        "baseline",
    ]
    s = by_name(full)
    assert s["late-connect/fix-on"].params == {"case": "late-connect", "fix": "on"}
    assert s["baseline"].params == {}


def test_scenario_variables_layer_overrides_over_defaults(full: list[Scenario]) -> None:
    s = by_name(full)
    assert s["slow-dst/fix-off"].vars == {
        "bandwidth": 20,
        "dst_delay": "1000ms",
        "connect": "before",
        "guard": False,
        "expect": "switch-host",
    }
    assert s["late-connect/fix-on"].vars["connect"] == "at 3s"
    assert s["baseline"].vars["expect"] == "seamless"


def test_steps_are_typed_with_units_parsed(full: list[Scenario]) -> None:
    steps = by_name(full)["slow-dst/fix-off"].steps
    assert [type(st) for st in steps] == [
        UpStep,
        ShapeStep,
        StartGuestStep,
        ConnectClientStep,
        MigrateStep,
        WaitStep,
        ShapeStep,
        ExpectStep,
    ]
    shape, guest, connect, migrate, wait, clear = steps[1:7]
    assert isinstance(shape, ShapeStep) and shape.profile == LinkProfile(delay_ms=1000.0)
    assert (shape.src, shape.dst, shape.network, shape.clear) == ("client", "dst", "display", False)
    assert isinstance(guest, StartGuestStep) and guest.fill_mib == 64 and guest.dirty_rate == 0
    assert isinstance(connect, ConnectClientStep) and connect.when == Trigger(kind="before")
    assert isinstance(migrate, MigrateStep)
    assert migrate.timeout_ms == 180_000.0 and migrate.max_downtime_ms == 300.0
    assert migrate.wait is False and migrate.auto_converge is False
    assert isinstance(wait, WaitStep)
    assert wait.until == Condition(kind="migration_done") and wait.timeout_ms == 180_000.0
    assert isinstance(clear, ShapeStep) and clear.clear and clear.profile is None
    assert migrate.where.endswith("pb.yaml:27: steps[4].migrate")


def test_whole_string_variable_keeps_its_type(full: list[Scenario]) -> None:
    s = by_name(full)
    off = s["late-connect/fix-off"].steps[4]
    on = s["late-connect/fix-on"].steps[4]
    assert isinstance(off, MigrateStep) and isinstance(on, MigrateStep)
    assert off.bandwidth_mib == 20 and off.guard is False and on.guard is True
    assert s["late-connect/fix-on"].steps[3].when == Trigger(kind="time", value=3000.0)


def test_expectation_comes_from_the_expect_steps(full: list[Scenario]) -> None:
    s = by_name(full)
    assert s["late-connect/fix-off"].expect is not None
    assert s["late-connect/fix-off"].expect.outcome == "switch-host"
    assert s["late-connect/fix-off"].expect.usbredir == "migrated"
    assert s["baseline"].outcome == "seamless"


def test_list_rows_give_name_params_and_outcome(full: list[Scenario]) -> None:
    rows = scenario_rows(full)
    assert rows[0] == (
        "late-connect/fix-off",
        {"case": "late-connect", "fix": "off"},
        "switch-host",
    )
    assert rows[-1].name == "baseline" and rows[-1].outcome == "seamless"


def test_default_names_join_values_and_exclude_drops_matches(tmp_path: Path) -> None:
    text = """\
    name: grid
    vars: {v: 1}
    matrix:
      a: {x: , y: {v: 2}}
      b: {"10": {w: 1}, 20: {w: 2}}
    exclude:
      - {a: y, b: 20}
    steps:
      - migrate: {guest: vm, to: dst, bandwidth: "{v}{w}"}
    """
    scenarios = load_playbook(write(tmp_path, text)).scenarios()
    assert [s.name for s in scenarios] == ["x-10", "x-20", "y-10"]
    assert [s.steps[0].bandwidth_mib for s in scenarios] == [11, 12, 21]


def test_without_matrix_there_is_one_scenario_named_after_the_playbook(tmp_path: Path) -> None:
    text = """\
    name: simple
    steps:
      - wait: {until: 2s}
      - expect: {migration: completed}
      - expect: {max_unresponsive: 1.5s}
    """
    (s,) = load_playbook(write(tmp_path, text)).scenarios()
    assert s.name == "simple" and s.params == {} and s.outcome is None
    assert s.steps[0].until == Condition(kind="time", value=2000.0)
    assert s.steps[0].timeout_ms is None
    assert s.expect is not None
    assert (s.expect.migration, s.expect.max_unresponsive_ms) == ("completed", 1500.0)


def test_yaml_11_booleans_stay_names(tmp_path: Path) -> None:
    """`on`/`off`/`yes` as keys and exclude values are the names the user wrote."""
    text = """\
    name: norway
    matrix:
      fix: {on: {g: true}, off: {g: false}, yes: {g: true}}
    exclude:
      - {fix: yes}
    steps:
      - migrate: {guest: vm, to: dst, guard: "{g}"}
    """
    pb = load_playbook(write(tmp_path, text))
    assert pb.axes() == {"fix": ["on", "off", "yes"]}
    assert [s.name for s in pb.scenarios()] == ["on", "off"]


def test_a_playbook_built_in_python_expands_too() -> None:
    pb = Playbook.model_validate(
        {"name": "py", "vars": {"d": "5ms"}, "steps": [{"wait": {"until": "{d}"}}]}
    )
    (s,) = pb.scenarios()
    assert s.steps[0].until == Condition(kind="time", value=5.0)


# -- variables ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{n}", 20),
        ("{b}", False),
        ("{m}", {"delay": "1s"}),
        ("{n} MiB/s", "20 MiB/s"),
        ("guard={b}", "guard=false"),
        ("{{n}}", "{n}"),
        ("{{{n}}}", "{20}"),
        ("plain", "plain"),
    ],
)
def test_substitute(text: str, expected: object) -> None:
    assert substitute(text, {"n": 20, "b": False, "m": {"delay": "1s"}}) == expected


@pytest.mark.parametrize(
    ("text", "error", "says"),
    [
        ("{nope}", UnsetVariable, "nope"),
        ("x {nope}", UnsetVariable, "nope"),
        ("a{", ValueError, "write {{ for a literal {"),
        ("a}", ValueError, "write }} for a literal }"),
        ("{1x}", ValueError, "is not a variable"),
        ("x{m}", ValueError, "is a mapping; it can only be a whole value"),
    ],
)
def test_substitute_refuses(text: str, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=re.escape(says)):
        substitute(text, {"m": {"a": 1}})


# -- triggers and conditions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("before", "before", None),
        ("after", "after", None),
        ("at 30%", "progress", 30.0),
        ("at 3s", "time", 3000.0),
        ("  at 250ms ", "time", 250.0),
    ],
)
def test_trigger_grammar(text: str, kind: str, value: float | None) -> None:
    t = Trigger.parse(text)
    assert (t.kind, t.value) == (kind, value)
    assert Trigger.parse(str(t)) == t


@pytest.mark.parametrize("text", ["at 3", "soon", "at", "at 120%", "at -1s", 3, "3s"])
def test_bad_triggers_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match="found"):
        Trigger.parse(text)


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("migration_done", "migration_done", None),
        ("client_connected", "client_connected", None),
        ("migration_progress >= 50", "progress", 50.0),
        ("migration_progress>=50%", "progress", 50.0),
        ("2s", "time", 2000.0),
    ],
)
def test_wait_condition_grammar(text: str, kind: str, value: float | None) -> None:
    c = Condition.parse(text)
    assert (c.kind, c.value) == (kind, value)
    assert Condition.parse(str(c)) == c


# -- -k selection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "names"),
    [
        ("", ["late-connect/fix-off", "late-connect/fix-on", "slow-dst/fix-off", "baseline"]),
        ("late", ["late-connect/fix-off", "late-connect/fix-on"]),
        ("not late", ["slow-dst/fix-off", "baseline"]),
        ("fix=on or baseline", ["late-connect/fix-on", "baseline"]),
        ("LATE and not fix-on", ["late-connect/fix-off"]),
        ("not (slow or late)", ["baseline"]),
        ("case=slow-dst", ["slow-dst/fix-off"]),
    ],
)
def test_select(full: list[Scenario], pattern: str, names: list[str]) -> None:
    assert [s.name for s in select(full, pattern)] == names


@pytest.mark.parametrize("pattern", ["late and", "(late", "late)", "or late", "not"])
def test_select_refuses_broken_expressions(full: list[Scenario], pattern: str) -> None:
    with pytest.raises(InputError, match="-k"):
        select(full, pattern)


# -- errors: file, line, field, scenario --------------------------------------------------------


def marked_line(path: Path) -> int:
    lines = path.read_text().splitlines()
    (line,) = [i + 1 for i, text in enumerate(lines) if "# error here" in text]
    return line


@pytest.mark.parametrize(
    ("fixture", "field", "scenario", "says"),
    [
        ("unknown_variable", "steps[0].migrate.bandwidth", None, "unknown variable {bandwdth}"),
        ("unset_in_scenario", "steps[1].expect.outcome", "baseline", "{expect} is not set"),
        ("unknown_step", "steps[1].migrat", None, "unknown step kind 'migrat'"),
        ("bad_unit", "steps[0].shape.delay", "far", "unknown unit 'xs' in '1000xs'"),
        ("bad_unit_literal", "steps[0].migrate.max_downtime", None, "'3 fortnights'"),
        ("bad_trigger", "steps[0].connect_client.when", "late", "found 'at 3'"),
        ("bad_matrix", "matrix.fix.on", None, "expected a mapping"),
        ("duplicate_names", "scenarios[0].name", None, "duplicate scenario name 'on'"),
        ("duplicate_format", "name_format", None, "duplicate scenario name 'late'"),
        ("bad_exclude", "exclude[0].fix", None, "has no value 'maybe'"),
        ("shape_without_profile", "steps[0].shape", None, "needs a profile field"),
        ("unknown_field", "steps[0].migrate.bandwith", None, "did you mean 'bandwidth'"),
        ("not_yaml", None, None, "not valid YAML"),
    ],
)
def test_bad_playbooks_name_file_line_field_and_scenario(
    fixture: str, field: str | None, scenario: str | None, says: str
) -> None:
    path = DATA / f"{fixture}.yaml"
    with pytest.raises(InputError) as ei:
        load_playbook(path)
    err, text = ei.value, str(ei.value)
    line = marked_line(path)
    assert text.startswith(f"{path}:{line}: ")
    assert (err.file, err.line, err.field) == (str(path), line, field)
    if field:
        assert f":{line}: {field}: " in text
    assert says in text
    if scenario:
        assert f"in scenario {scenario!r}" in text
    else:
        assert "in scenario" not in text


def test_a_variable_made_error_says_where_the_variable_was_set() -> None:
    path = DATA / "bad_unit.yaml"
    with pytest.raises(InputError) as ei:
        load_playbook(path)
    assert ei.value.hint == (
        "{dst_delay} is '1000xs' here, set at matrix.case.far.dst_delay (line 8)"
    )


def error_of(tmp_path: Path, text: str) -> InputError:
    with pytest.raises(InputError) as ei:
        load_playbook(write(tmp_path, text))
    return ei.value


def test_a_cross_field_error_names_the_scenario_whose_variable_caused_it(tmp_path: Path) -> None:
    err = error_of(
        tmp_path,
        """\
        name: jitter
        matrix:
          d: {none: {d: 0ms}, some: {d: 50ms}}
        steps:
          - shape: {from: a, to: b, network: n, delay: "{d}", jitter: 10ms}
        """,
    )
    assert (err.line, err.field) == (5, "steps[0].shape.jitter")
    assert "in scenario 'none': jitter needs a delay" in str(err)


@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        (
            "name: t\nvars: {x: 1}\nmatrix:\n  a: {p: {x: 2}}\n  b: {q: {x: 3}}\n"
            "steps:\n  - migrate: {guest: vm, to: dst, bandwidth: '{x}'}\n",
            5,
            "matrix.b.q.x",
            "set by axis 'a' and axis 'b'",
        ),
        (
            "name: t\nmatrix:\n  a: {p: {conect: 1}}\nsteps:\n  - up: {}\n",
            3,
            "matrix.a.p.conect",
            "no step uses",
        ),
        (
            "name: t\nsteps:\n  - connect_client: {client: c, guest: vm, when: at 30%}\n",
            3,
            "steps[0].connect_client.when",
            "no migrate step follows",
        ),
        (
            "name: t\nsteps:\n  - wait: {until: migration_done}\n",
            3,
            "steps[0].wait.until",
            "no migrate step comes before",
        ),
        (
            "name: t\nsteps:\n  - migrate: {guest: vm, to: dst, timeout: 180}\n",
            3,
            "steps[0].migrate.timeout",
            "shorter than 1s",
        ),
        (
            "name: t\nsteps:\n  - expect: {outcome: seamless}\n  - expect: {outcome: lost}\n",
            4,
            "steps[1].expect.outcome",
            "an earlier expect step says 'seamless'",
        ),
        (
            "name: t\nsteps:\n  - shape: {from: a, to: b, network: n, clear: true, loss: 1%}\n",
            3,
            "steps[0].shape.clear",
            "takes no profile field",
        ),
        (
            "name: t\nsteps:\n  - wait: {until: '{x'}\n",
            3,
            "steps[0].wait.until",
            "write {{ for a literal {",
        ),
        (
            "name: t\nsteps: []\n",
            2,
            "steps",
            "at least 1 item",
        ),
        (
            "name: t\nmatrix:\n  a: {p: {}}\nexclude:\n  - {a: p}\nsteps:\n  - up: {}\n",
            4,
            "exclude",
            "drops every combination",
        ),
        (
            "name: t\nmatrix:\n  case: {p: {}}\nname_format: '{cse}'\nsteps:\n  - up:\n",
            4,
            "name_format",
            "unknown variable {cse}; did you mean 'case'?",
        ),
        (
            "name: t\nvars: {m: {a: 1}}\nsteps:\n  - wait: {until: 'x{m}'}\n",
            4,
            "steps[0].wait.until",
            "{m} is a mapping",
        ),
        (
            "name: t\nsteps:\n  - shape: {from: a, to: a, network: n, loss: 1%}\n",
            3,
            "steps[0].shape.to",
            "two different hosts",
        ),
    ],
)
def test_more_errors(tmp_path: Path, text: str, line: int, field: str, says: str) -> None:
    err = error_of(tmp_path, text)
    assert (err.file, err.line, err.field) == (str(tmp_path / "pb.yaml"), line, field)
    assert says in str(err)


def test_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    err = error_of(tmp_path, "")
    assert "empty" in str(err) and err.hint == "a playbook needs name and steps"
    with pytest.raises(InputError, match="no such file"):
        load_playbook(tmp_path / "nope.yaml")


def test_parse_playbook_names_the_file_it_is_told(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^given\.yaml:3: steps\[0\]\.upp: "):
        parse_playbook("name: t\nsteps:\n  - upp: {}\n", "given.yaml")
