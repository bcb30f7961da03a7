"""farebox.catalog.toml: the fast reader must give exactly tomllib's result or error, on
any text, and must read the catalogs we ship without handing them to tomllib."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farebox.catalog import toml
from farebox.catalog.load import builtin_text
from farebox.catalog.simulated import sim_catalog

DOCS = Path(__file__).resolve().parents[2] / "docs" / "catalog.md"


def outcome(loads: Any, text: str) -> tuple[str, Any]:
    try:
        return "ok", loads(text)
    except tomllib.TOMLDecodeError as e:
        return "error", str(e)


def fast_path(text: str) -> bool:
    """Whether the reader reads `text` itself (True) or hands it to tomllib (False)."""
    try:
        toml._Reader().read(text)
    except toml._Outside:
        return False
    return True


def same_as_tomllib(text: str) -> None:
    # By repr: it tells 1 from 1.0 and True (all ==), and nan equals itself.
    assert repr(outcome(toml.loads, text)) == repr(outcome(tomllib.loads, text)), text


# -- the catalogs we ship and document take the fast path --------------------------------------

def test_builtin_catalog_reads_the_same_on_the_fast_path() -> None:
    text = builtin_text()
    assert fast_path(text)
    same_as_tomllib(text)


def test_simulated_catalog_reads_the_same_on_the_fast_path() -> None:
    text = sim_catalog("http://127.0.0.1:1/v1")
    assert fast_path(text)
    same_as_tomllib(text)


def test_documented_examples_read_the_same() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), re.S)
    assert len(blocks) >= 3
    for block in blocks:
        same_as_tomllib(block)
    # One-line arrays, inline tables, comments and blank lines all stay on the fast path;
    # only the docs' multi-line array goes to tomllib.
    assert sum(fast_path(b) for b in blocks) == len(blocks) - 1


def test_bench_catalog_shape_reads_the_same_on_the_fast_path() -> None:
    text = """
[providers.p]
name = "P"
dialect = "openai"
base_url = "https://p.example/v1/"
api_key = "env:P_KEY"
trains_on_prompts = false
retains_prompts = true
options = { max_tokens_field = "max_tokens", drop_fields = ["logit_bias"] }

[[models]]
id = "a/m:thinking"
name = "A: M"
created = 1700000000
context_length = 131072
input_modalities = ["text", "image"]
default_parameters = { reasoning = { max_tokens = 2048 } }

  [[models.endpoints]]
  provider = "p"
  model = "m-1"   # a comment
  supported_parameters = ["temperature", "reasoning",]
  [models.endpoints.pricing]
  prompt = "0.000001"
  completion = "0.000004"

  [[models.endpoints]]
  provider = "q"
  model = "m-2"
  pricing = { prompt = "0", completion = "0" }
"""
    assert fast_path(text)
    same_as_tomllib(text)


# -- what the fast path leaves to tomllib --------------------------------------------------------

@pytest.mark.parametrize("text", [
    'a.b = 1',                                    # dotted key
    '"quoted" = 1',                               # quoted key
    'a = [\n  "x",\n]',                           # multi-line array
    'a = """x\ny"""',                             # multi-line string
    'a = 1\na = 2',                               # duplicate key (an error)
    '[t]\n[t]',                                   # table defined twice (an error)
    '[t.u]\n[t]',                                 # super-table after its sub-table (valid)
    '[[t]]\n[t]',                                 # table over an array of tables (an error)
    'a = [{b = 1}]\n[[a]]',                       # a static array extended by a header (an error)
    'a = {b = 1}\n[a.c]',                         # an inline table extended by a header (an error)
    'a = 1\r',                                    # lone CR (an error)
    '[ "q" ]',                                    # quoted table name
    'a = 1 2',                                    # junk after a value (an error)
])
def test_outside_the_subset_tomllib_reads_it(text: str) -> None:
    assert not fast_path(text)
    same_as_tomllib(text)


@pytest.mark.parametrize("text", [
    'a = 1.5', 'a = 1_000', 'a = 0x1f', 'a = +1', 'a = -0', 'a = "tab\tin"', 'a = "esc\\"aped"',
    "a = 'literal'", 'a = 1979-05-27', 'a = inf', 'a = [1, "x"]', 'a = "#not a comment"',
    'a = "x" # "y"', 'a = []', 'a = [ ]', 'a = {}', 'k-1_B = true', '[a-b.c_d]\nx = false',
    'a = "x"\r\nb = 2\r\n', '\ufeffa = 1', 'a = "\x7f"', 'a = 1 # \x01', '[[x]]\n[[x]]\n[x.y]\nz = 1',
])
def test_edge_values_read_the_same(text: str) -> None:
    same_as_tomllib(text)


# -- generated documents -------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "models", "endpoints", "pricing", "x-1", "Y_2", "a.b", '"a"', "a b", ""])
PATHS = st.lists(st.sampled_from(["a", "b", "models", "endpoints", "pricing", "c"]), min_size=1, max_size=3).map(".".join)
TEXT = st.text(alphabet=st.sampled_from(list('ab #"\\\t\x01\x7fé[]{},=\'\r')), max_size=6)
VALUES = st.one_of(
    TEXT.map(lambda t: f'"{t}"'), TEXT.map(lambda t: f"'{t}'"), TEXT,
    st.sampled_from(["0", "-0", "01", "1_0", "+1", "12", "-7", "0x1", "1.5", "1e3", "nan", "true", "false", "True"]),
    st.lists(TEXT.map(lambda t: f'"{t}"'), max_size=3).map(lambda items: "[" + ", ".join(items) + "]"),
    st.lists(TEXT.map(lambda t: f'"{t}"'), max_size=3).map(lambda items: "[" + ",".join(items) + ",]"),
    st.sampled_from(["[", "[1, 2]", "{}", "{ a = 1 }", "{a={b=[1]}}", '"""x', "[\n"]),
)
SPACE = st.sampled_from(["", " ", "\t", "  "])
COMMENT = st.sampled_from(["", " # c", "# c", ' # "q"', " # \x01", " #"])
LINES = st.one_of(
    st.just(""),
    COMMENT,
    st.tuples(SPACE, PATHS, SPACE, COMMENT).map(lambda p: f"{p[0]}[{p[1]}]{p[2]}{p[3]}"),
    st.tuples(SPACE, PATHS, SPACE, COMMENT).map(lambda p: f"{p[0]}[[{p[1]}]]{p[2]}{p[3]}"),
    st.tuples(SPACE, KEYS, SPACE, SPACE, VALUES, COMMENT).map(lambda p: f"{p[0]}{p[1]}{p[2]}={p[3]}{p[4]}{p[5]}"),
)
ENDINGS = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r"])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(LINES, ENDINGS), max_size=12))
def test_generated_documents_read_the_same(lines: list[tuple[str, str]]) -> None:
    same_as_tomllib("".join(line + end for line, end in lines))


VALID_VALUES = st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters='"\\'), max_size=8)
    .map(lambda t: f'"{t}"'),
    st.integers(-10**20, 10**20).map(str),
    st.sampled_from(["true", "false", '["x", "y"]', "[]", '{ k = "v" }']),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("table"), PATHS), st.tuples(st.just("array"), PATHS),
    st.tuples(st.sampled_from(["a", "b", "c", "name"]), VALID_VALUES)), max_size=15))
def test_generated_catalog_like_documents_read_the_same(items: list[tuple[str, str]]) -> None:
    """Mostly valid documents: tables, arrays of tables and key/values over a few names,
    so that redefinitions and duplicate keys come up often."""
    lines = []
    for kind, arg in items:
        lines.append(f"[{arg}]" if kind == "table" else f"[[{arg}]]" if kind == "array" else f"{kind} = {arg}")
    same_as_tomllib("\n".join(lines) + "\n")
