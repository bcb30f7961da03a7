"""The built-in catalog and the catalog loader: validation, credentials, layering, error paths."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from farebox.catalog.load import builtin_text, load_catalog, parse_layers
from farebox.catalog.model import PRICE_KEYS, Catalog
from farebox.catalog.options import OPTIONS
from farebox.errors import ConfigError
from farebox.money import parse_price, price_text

REQUIRED_PROVIDERS = {"openai", "anthropic", "google-ai-studio", "deepseek", "mistral", "groq", "xai"}

# A minimal valid catalog the error tests start from; each test breaks one thing.
PROVIDER = """
[providers.acme]
name = "Acme"
dialect = "openai"
base_url = "https://api.acme.test/v1"
api_key = "env:ACME_KEY"
trains_on_prompts = false
retains_prompts = false
"""

MODEL = """
[[models]]
id = "acme/widget"
name = "Acme: Widget"
context_length = 8192

  [[models.endpoints]]
  provider = "acme"
  model = "widget-1"
  max_completion_tokens = 1024
  [models.endpoints.pricing]
  prompt = "0.000001"
  completion = "0.000002"
"""


def load_text(text: str, env: dict[str, str] | None = None) -> Catalog:
    return load_catalog(builtin=False, extra_text=text, env=env or {})


@pytest.fixture(scope="module")
def builtin() -> Catalog:
    return load_catalog(builtin=True, env={})


# ---------------------------------------------------------------- the built-in catalog


def test_builtin_loads_and_validates(builtin: Catalog) -> None:
    assert 30 <= len(builtin.models) <= 60
    assert builtin.credentials == {}  # no environment -> nothing routable, but everything valid


def test_builtin_has_the_required_providers(builtin: Catalog) -> None:
    assert len(builtin.providers) >= 7
    assert set(builtin.providers) >= REQUIRED_PROVIDERS
    assert builtin.providers["openai"].dialect == "openai"
    assert builtin.providers["anthropic"].dialect == "anthropic"
    assert builtin.providers["google-ai-studio"].dialect == "gemini"
    assert builtin.providers["groq"].base_url == "https://api.groq.com/openai/v1"
    for provider in builtin.providers.values():
        assert provider.api_key.startswith("env:"), provider.slug


def test_builtin_every_model_has_an_endpoint_and_sane_limits(builtin: Catalog) -> None:
    for model in builtin.models.values():
        assert model.endpoints, model.id
        assert model.name and model.description and model.created > 1_600_000_000, model.id
        for endpoint in model.endpoints:
            assert endpoint.max_completion_tokens <= endpoint.context_length <= model.context_length, (
                endpoint.id
            )
            if "embeddings" in model.output_modalities:  # no output tokens, no parameters to speak of
                assert endpoint.pricing.prompt > 0 and endpoint.pricing.completion == 0, endpoint.id
                continue
            assert endpoint.supported_parameters, endpoint.id
            assert endpoint.pricing.prompt > 0 and endpoint.pricing.completion > 0, endpoint.id


def test_builtin_every_price_parses_and_round_trips() -> None:
    data = tomllib.loads(builtin_text())
    seen = 0
    for model in data["models"]:
        for endpoint in model["endpoints"]:
            for key, text in endpoint["pricing"].items():
                assert key in PRICE_KEYS
                assert "e" not in text.lower(), f"{model['id']}: {key} uses an exponent: {text}"
                assert re.fullmatch(r"\d+(\.\d+)?", text), f"{model['id']}: {key} = {text!r}"
                assert price_text(parse_price(text)) == text, f"{model['id']}: {key} is not canonical"
                seen += 1
    assert seen >= 70


def test_builtin_every_endpoint_provider_exists(builtin: Catalog) -> None:
    for model in builtin.models.values():
        for endpoint in model.endpoints:
            assert endpoint.provider is builtin.providers[endpoint.provider.slug]


@pytest.mark.parametrize(
    ("model_id", "provider", "key", "price"),
    [
        ("openai/gpt-4o-mini", "openai", "prompt", "0.00000015"),
        ("openai/gpt-4o-mini", "openai", "completion", "0.0000006"),
        ("openai/gpt-4o-mini", "openai", "input_cache_read", "0.000000075"),
        ("openai/gpt-5.5", "openai", "prompt", "0.000005"),
        ("anthropic/claude-sonnet-4.6", "anthropic", "prompt", "0.000003"),
        ("anthropic/claude-sonnet-4.6", "anthropic", "input_cache_write", "0.00000375"),
        ("anthropic/claude-sonnet-4.6", "anthropic", "input_cache_read", "0.0000003"),
        ("google/gemini-2.5-flash", "google-ai-studio", "completion", "0.0000025"),
        ("deepseek/deepseek-v4-flash", "deepseek", "input_cache_read", "0.0000000028"),
        ("meta-llama/llama-3.3-70b-instruct", "groq", "prompt", "0.00000059"),
        ("x-ai/grok-4.3", "xai", "completion", "0.0000025"),
    ],
)
def test_builtin_spot_prices(builtin: Catalog, model_id: str, provider: str, key: str, price: str) -> None:
    model = builtin.model(model_id)
    assert model is not None
    [endpoint] = [e for e in model.endpoints if e.provider.slug == provider]
    assert endpoint.pricing.wire()[key] == price


def test_builtin_anthropic_cache_prices_follow_the_rule(builtin: Catalog) -> None:
    for model in builtin.models.values():
        for endpoint in model.endpoints:
            if endpoint.provider.slug != "anthropic":
                continue
            p = endpoint.pricing
            assert p.input_cache_write * 4 == p.prompt * 5, endpoint.id  # 1.25x
            assert p.input_cache_read * 10 == p.prompt, endpoint.id  # 0.1x


def test_builtin_open_model_served_twice_has_one_endpoint_per_provider(builtin: Catalog) -> None:
    model = builtin.model("openai/gpt-oss-120b")
    assert model is not None
    slugs = [e.provider.slug for e in model.endpoints]
    assert len(slugs) >= 2 and len(set(slugs)) == len(slugs)
    assert "groq" in slugs


# ---------------------------------------------------------------- credentials


def test_env_credential_present() -> None:
    catalog = load_catalog(builtin=True, env={"OPENAI_API_KEY": "sk-x"})
    assert catalog.credentials["openai"] == "sk-x"
    assert catalog.credential(catalog.providers["openai"]) == "sk-x"
    assert "anthropic" not in catalog.credentials


def test_env_credential_absent_or_empty() -> None:
    assert "openai" not in load_catalog(builtin=True, env={}).credentials
    assert "openai" not in load_catalog(builtin=True, env={"OPENAI_API_KEY": ""}).credentials


def test_file_credential(tmp_path: Path) -> None:
    secret = tmp_path / "acme.key"
    secret.write_text("  file-secret\n")
    catalog = load_text(PROVIDER.replace('"env:ACME_KEY"', f'"file:{secret}"'))
    assert catalog.credentials["acme"] == "file-secret"


def test_file_credential_missing_or_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    for path in (tmp_path / "missing.key", empty):
        catalog = load_text(PROVIDER.replace('"env:ACME_KEY"', f'"file:{path}"'))
        assert "acme" not in catalog.credentials


def test_none_credential_resolves_to_empty_string() -> None:
    catalog = load_text(PROVIDER.replace('"env:ACME_KEY"', '"none"'))
    assert catalog.credentials["acme"] == ""
    assert catalog.credential(catalog.providers["acme"]) == ""


# ---------------------------------------------------------------- layering


def test_extra_file_overrides_only_base_url(tmp_path: Path) -> None:
    before = load_catalog(builtin=True, env={}).providers["openai"]
    extra = tmp_path / "catalog.toml"
    extra.write_text('[providers.openai]\nbase_url = "http://localhost:8080/v1/"\n')
    after = load_catalog(builtin=True, extra_path=str(extra), env={}).providers["openai"]
    assert after.base_url == "http://localhost:8080/v1"
    assert (after.name, after.dialect, after.api_key) == (before.name, before.dialect, before.api_key)
    assert (after.trains_on_prompts, after.retains_prompts) == (
        before.trains_on_prompts,
        before.retains_prompts,
    )


def test_extra_model_with_existing_id_replaces_it_whole(tmp_path: Path) -> None:
    builtin_count = len(load_catalog(builtin=True, env={}).models)
    extra = tmp_path / "catalog.toml"
    extra.write_text("""
[[models]]
id = "openai/gpt-4o-mini"
name = "Local override"
context_length = 4096

  [[models.endpoints]]
  provider = "openai"
  model = "gpt-4o-mini"
  max_completion_tokens = 512
  [models.endpoints.pricing]
  prompt = "0.000001"
  completion = "0.000001"
""")
    catalog = load_catalog(builtin=True, extra_path=str(extra), env={})
    model = catalog.models["openai/gpt-4o-mini"]
    assert model.name == "Local override"
    assert model.description == ""  # nothing carried over from the built-in entry
    assert [e.max_completion_tokens for e in model.endpoints] == [512]
    assert model.endpoints[0].pricing.input_cache_read is None
    assert len(catalog.models) == builtin_count


def test_extra_file_adds_a_self_hosted_provider(tmp_path: Path) -> None:
    extra = tmp_path / "catalog.toml"
    extra.write_text("""
[providers.local-vllm]
name = "Local vLLM"
dialect = "openai"
base_url = "http://127.0.0.1:8000/v1"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[[models]]
id = "meta-llama/llama-3.1-8b-instruct"
name = "Meta: Llama 3.1 8B Instruct (local)"
context_length = 131072

  [[models.endpoints]]
  provider = "local-vllm"
  model = "meta-llama/Llama-3.1-8B-Instruct"
  max_completion_tokens = 8192
  quantization = "bf16"
  [models.endpoints.pricing]
  prompt = "0"
  completion = "0"
""")
    catalog = load_catalog(builtin=True, extra_path=str(extra), env={})
    assert catalog.credentials == {"local-vllm": ""}
    model = catalog.models["meta-llama/llama-3.1-8b-instruct"]
    assert [e.provider.slug for e in model.endpoints] == ["local-vllm"]
    assert model.endpoints[0].pricing.is_free


def test_missing_extra_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_catalog(builtin=True, extra_path=str(tmp_path / "nope.toml"), env={})


def test_pricing_fallbacks_when_optional_prices_are_absent() -> None:
    catalog = load_text(PROVIDER + MODEL)
    pricing = catalog.models["acme/widget"].endpoints[0].pricing
    assert (pricing.request, pricing.image) == (0, 0)
    assert pricing.input_cache_read is None and pricing.cache_read == pricing.prompt
    assert pricing.input_cache_write is None and pricing.cache_write == pricing.prompt
    assert pricing.internal_reasoning is None and pricing.reasoning == pricing.completion
    assert set(pricing.wire()) == {"prompt", "completion", "request", "image"}


def test_parse_layers_later_provider_field_wins() -> None:
    providers, _ = parse_layers([("a", PROVIDER), ("b", '[providers.acme]\nname = "Renamed"\n')])
    assert providers["acme"].name == "Renamed"
    assert providers["acme"].base_url == "https://api.acme.test/v1"


def test_docs_examples_load() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "catalog.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", doc, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        load_catalog(builtin=True, extra_text=block, env={})
    (local_block,) = [b for b in blocks if "local-vllm" in b]
    local = load_catalog(builtin=True, extra_text=local_block, env={})
    assert local.credentials == {"local-vllm": "", "ollama": ""}
    (h2_block,) = [b for b in blocks if "http2" in b]
    assert load_catalog(builtin=True, extra_text=h2_block, env={}).providers["openai"].http2


def test_http2_is_off_unless_asked_and_must_be_a_bool() -> None:
    assert not load_text(PROVIDER).providers["acme"].http2
    assert load_text(PROVIDER + "http2 = true\n").providers["acme"].http2
    with pytest.raises(ConfigError, match=r"providers\.acme\.http2: expected bool, got str"):
        load_text(PROVIDER + 'http2 = "yes"\n')


# ---------------------------------------------------------------- validation errors name their path


def test_error_unknown_top_level_key() -> None:
    with pytest.raises(ConfigError, match=r"catalog: routes: unknown top-level key"):
        load_text("[routes]\nx = 1\n" + PROVIDER)


def test_error_unknown_provider_field() -> None:
    with pytest.raises(ConfigError, match=r"providers\.acme\.region: unknown field"):
        load_text(PROVIDER + 'region = "eu"\n')


def test_error_bad_dialect() -> None:
    with pytest.raises(ConfigError, match=r"providers\.acme\.dialect: unknown dialect 'cohere'"):
        load_text(PROVIDER.replace('dialect = "openai"', 'dialect = "cohere"'))


def test_error_bad_base_url() -> None:
    with pytest.raises(ConfigError, match=r"providers\.acme\.base_url: must start with http"):
        load_text(PROVIDER.replace('"https://api.acme.test/v1"', '"api.acme.test/v1"'))


@pytest.mark.parametrize("ref", ["sk-live-123", "env:", "file:"])
def test_error_literal_secret_in_api_key(ref: str) -> None:
    with pytest.raises(ConfigError, match=r"providers\.acme\.api_key: must be 'env:NAME'"):
        load_text(PROVIDER.replace('"env:ACME_KEY"', f'"{ref}"'))


def test_error_missing_required_model_field() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.name: required field is missing"):
        load_text(PROVIDER + MODEL.replace('name = "Acme: Widget"\n', ""))


def test_error_missing_required_provider_field() -> None:
    with pytest.raises(ConfigError, match=r"providers\.acme\.retains_prompts: required field is missing"):
        load_text(PROVIDER.replace("retains_prompts = false\n", ""))


@pytest.mark.parametrize("bad_id", ["widget", "Acme/widget", "acme/", "acme/wid get"])
def test_error_bad_model_id(bad_id: str) -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.id: .* is not of the form author/slug"):
        load_text(PROVIDER + MODEL.replace('"acme/widget"', f'"{bad_id}"'))


def test_error_unknown_endpoint_provider() -> None:
    with pytest.raises(
        ConfigError, match=r"models\[0\]\.endpoints\[0\]\.provider: unknown provider 'nobody'"
    ):
        load_text(PROVIDER + MODEL.replace('provider = "acme"', 'provider = "nobody"'))


def test_error_bad_price_string() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.endpoints\[0\]\.pricing\.prompt") as info:
        load_text(PROVIDER + MODEL.replace('prompt = "0.000001"', 'prompt = "cheap"'))
    assert "models[0].endpoints[0].pricing.prompt" in str(info.value)


def test_error_price_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.endpoints\[0\]\.pricing\.prompt: expected str"):
        load_text(PROVIDER + MODEL.replace('prompt = "0.000001"', "prompt = 0.000001"))


def test_error_price_with_more_than_18_decimals() -> None:
    with pytest.raises(ConfigError, match=r"pricing\.completion: price has more than 18 decimal places"):
        load_text(PROVIDER + MODEL.replace('completion = "0.000002"', 'completion = "0.0000000000000000001"'))


def test_price_with_exactly_18_decimals_is_fine() -> None:
    catalog = load_text(
        PROVIDER + MODEL.replace('completion = "0.000002"', 'completion = "0.000000000000000001"')
    )
    assert catalog.models["acme/widget"].endpoints[0].pricing.completion == 1


def test_error_negative_price() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.endpoints\[0\]\.pricing\.prompt: .*negative"):
        load_text(PROVIDER + MODEL.replace('prompt = "0.000001"', 'prompt = "-0.000001"'))


def test_error_max_completion_tokens_exceeds_context_length() -> None:
    with pytest.raises(
        ConfigError,
        match=r"models\[0\]\.endpoints\[0\]\.max_completion_tokens: 9000 exceeds the context length 8192",
    ):
        load_text(PROVIDER + MODEL.replace("max_completion_tokens = 1024", "max_completion_tokens = 9000"))


def test_error_unknown_quantization() -> None:
    with pytest.raises(
        ConfigError, match=r"models\[0\]\.endpoints\[0\]\.quantization: unknown value 'q4_k_m'"
    ):
        load_text(
            PROVIDER + MODEL.replace('model = "widget-1"', 'model = "widget-1"\n  quantization = "q4_k_m"')
        )


def test_error_unknown_supported_parameter() -> None:
    with pytest.raises(
        ConfigError, match=r"models\[0\]\.endpoints\[0\]\.supported_parameters\[1\]: unknown value 'mirostat'"
    ):
        load_text(
            PROVIDER
            + MODEL.replace(
                'model = "widget-1"',
                'model = "widget-1"\n  supported_parameters = ["temperature", "mirostat"]',
            )
        )


def test_error_unknown_input_modality() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.input_modalities\[1\]: unknown value 'smell'"):
        load_text(
            PROVIDER
            + MODEL.replace(
                "context_length = 8192", 'context_length = 8192\ninput_modalities = ["text", "smell"]'
            )
        )


def test_error_duplicate_endpoint() -> None:
    endpoint = MODEL[MODEL.index("  [[models.endpoints]]") :]
    with pytest.raises(
        ConfigError, match=r"models\[0\]\.endpoints: two endpoints share a provider and upstream model"
    ):
        load_text(PROVIDER + MODEL + endpoint)


def test_error_model_without_endpoints() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.endpoints: "):
        load_text(PROVIDER + MODEL[: MODEL.index("  [[models.endpoints]]")])


def test_error_bad_toml_syntax_names_the_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^catalog: "):
        load_text(PROVIDER + "[[models]\nid = 1\n")
    extra = tmp_path / "broken.toml"
    extra.write_text('[providers.openai\nbase_url = "x"\n')
    with pytest.raises(ConfigError, match=re.escape(str(extra)) + ": "):
        load_catalog(builtin=True, extra_path=str(extra), env={})


def test_error_in_extra_file_model_names_that_file(tmp_path: Path) -> None:
    extra = tmp_path / "catalog.toml"
    extra.write_text(MODEL.replace("acme", "openai").replace('prompt = "0.000001"', 'prompt = "x"'))
    with pytest.raises(
        ConfigError, match=re.escape(str(extra)) + r": models\[0\]\.endpoints\[0\]\.pricing\.prompt"
    ):
        load_catalog(builtin=True, extra_path=str(extra), env={})


def test_provider_errors_name_the_files_that_defined_it():
    base = '[providers.p]\nname = "P"\ndialect = "openai"\nbase_url = "http://p"\napi_key = "none"\n' \
           'trains_on_prompts = false\nretains_prompts = false\n'
    with pytest.raises(ConfigError, match=r"^base \+ extra: providers\.p\.dialect: unknown dialect"):
        parse_layers([("base", base), ("extra", '[providers.p]\ndialect = "soap"\n')])


def test_duplicate_model_ids_in_one_file_are_refused():
    model = ('[[models]]\nid = "a/b"\nname = "x"\ncontext_length = 10\n[[models.endpoints]]\nprovider = "p"\n'
             'model = "m"\nmax_completion_tokens = 5\npricing = { prompt = "0", completion = "0" }\n')
    provider = '[providers.p]\nname = "P"\ndialect = "openai"\nbase_url = "http://p"\napi_key = "none"\n' \
               'trains_on_prompts = false\nretains_prompts = false\n'
    with pytest.raises(ConfigError, match=r"f: models\[1\]\.id: 'a/b' duplicates models\[0\]"):
        parse_layers([("f", provider + model + model)])
    # Across files a later model replaces an earlier one: that is how operators override.
    parse_layers([("f", provider + model), ("g", model)])


def test_endpoint_context_cannot_exceed_the_models():
    text = ('[providers.p]\nname = "P"\ndialect = "openai"\nbase_url = "http://p"\napi_key = "env:  "\n'
            'trains_on_prompts = false\nretains_prompts = false\n')
    with pytest.raises(ConfigError, match="api_key"):
        parse_layers([("f", text)])
    text = text.replace('"env:  "', '"none"') + (
        '[[models]]\nid = "a/b"\nname = "x"\ncontext_length = 10\n[[models.endpoints]]\nprovider = "p"\n'
        'model = "m"\ncontext_length = 20\nmax_completion_tokens = 5\npricing = { prompt = "0", completion = "0" }\n')
    with pytest.raises(ConfigError, match=r"models\[0\]\.endpoints\[0\]\.context_length: 20 exceeds"):
        parse_layers([("f", text)])


def test_error_unknown_provider_option() -> None:
    with pytest.raises(ConfigError, match=r"providers\.acme\.options\.max_tokenz: unknown option for the openai"):
        load_text(PROVIDER + 'options = { max_tokenz = "max_tokens" }\n')


def test_error_bad_provider_option_value() -> None:
    with pytest.raises(ConfigError, match=r"providers\.acme\.options\.max_tokens_field: unknown value 'max'"):
        load_text(PROVIDER + 'options = { max_tokens_field = "max" }\n')
    with pytest.raises(ConfigError, match=r"providers\.acme\.options\.send_user: expected bool"):
        load_text(PROVIDER + 'options = { send_user = "no" }\n')


def test_provider_options_get_their_defaults() -> None:
    catalog = load_text(PROVIDER + 'options = { stream_usage = "always" }\n')
    options = catalog.providers["acme"].options
    assert options["stream_usage"] == "always" and options["max_tokens_field"] == "as_sent"
    assert options["send_user"] is True and options["drop_fields"] == []


def test_every_provider_option_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "catalog.md").read_text()
    for dialect, specs in OPTIONS.items():
        for name in specs:
            assert f"| {dialect} | `{name}` |" in doc, name


def test_default_parameters_are_known_parameters() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.default_parameters\.thinkhard: unknown parameter"):
        load_text(PROVIDER + '''
[[models]]
id = "acme/m:thinking"
name = "M"
context_length = 1000
default_parameters = { thinkhard = true }
[[models.endpoints]]
provider = "acme"
model = "m"
max_completion_tokens = 100
pricing = { prompt = "0", completion = "0" }
''')
