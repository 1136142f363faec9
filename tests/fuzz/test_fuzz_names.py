"""The request paths check names without regular expressions (lib/wid/core/names.py `is_word`: compiling
one costs a CGI process about 0.6 M instructions). Each check here must say exactly what the regular
expression it replaced says, matched whole: these differential properties hold them to it, on strings
built from the characters at each class's edges, line breaks, look-alikes and non-ASCII digits."""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.budget import scaled
from wid import config_parsers
from wid.core import names, tokens, uri

# Each class's edges ('@' '[' '`' '{' around the letters, '/' ':' around the digits), the punctuation the
# classes allow, line breaks, a dotless i (its upper case is 'I'), a superscript and an Arabic-Indic digit
# (str.isdigit() says True), a fullwidth A.
_EDGES = "aAzZ09_-.:?=&/@[`{\n\r \t\u0131\u00b2\u0663\uff21bBkKiImMgG"
edgy = st.text(alphabet=st.sampled_from(_EDGES), max_size=70)
words = st.one_of(edgy, st.text(max_size=70))

API = r"[A-Za-z][A-Za-z0-9]{0,31}"
ACTX = r"[A-Za-z0-9][A-Za-z0-9:._-]{0,127}"


@scaled(1)
@given(words)
@example("a" * 32)
@example("a" * 33)
@example("a\n")
def test_api_names_are_what_the_expression_says(value: str) -> None:
    assert names.is_api(value) == (re.fullmatch(API, value) is not None)


@scaled(1)
@given(words)
@example("0" * 128)
@example("0" * 129)
@example(":a")
@example("a:b.c_d-e")
def test_context_ids_are_what_the_expression_says(value: str) -> None:
    assert names.is_actx(value) == (re.fullmatch(ACTX, value) is not None)


@scaled(1)
@given(st.one_of(words, st.text(alphabet=st.sampled_from("aZ09_-\n="), min_size=42, max_size=44)))
@example("A" * 43)
@example("A" * 42 + "\n")
def test_key_ids_are_what_the_expression_says(value: str) -> None:
    assert tokens.is_kid(value) == (re.fullmatch(r"[A-Za-z0-9_-]{43}", value) is not None)


@pytest.mark.parametrize("value", [None, 7, b"A" * 43, ["A" * 43]])
def test_only_a_str_is_a_name(value: object) -> None:
    assert not names.is_api(value) and not names.is_actx(value) and not tokens.is_kid(value)


@scaled(1)
@given(st.one_of(st.builds(lambda api, actx: f"api://{api}?actx={actx}", words, words),
                 st.builds(lambda a, b, c: f"{a}://{b}?actx={c}", edgy, edgy, edgy), words))
@example("api://DigitalOcean?actx=team?actx=other")
@example("api://DigitalOcean?actx=team\n")
@example("api://?actx=team")
@example("xapi://A?actx=b")
def test_audiences_are_what_the_expression_says(aud: str) -> None:
    match = re.fullmatch(rf"api://(?P<api>{API})\?actx=(?P<actx>{ACTX})", aud)
    try:
        audience = tokens.parse_audience(aud)
    except tokens.TokenError:
        assert match is None
    else:
        assert match is not None and (audience.api, audience.actx) == (match["api"], match["actx"])


_UNITS = {"": 1, "K": 10**3, "KI": 1 << 10, "M": 10**6, "MI": 1 << 20, "G": 10**9, "GI": 1 << 30}


@scaled(1)
@given(st.one_of(st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**18).map(str), edgy), edgy, words))
@example("64MB\n")
@example("64BB")
@example("64iB")
@example("64M\u0131")
@example("0b")
def test_sizes_are_what_the_expression_says(raw: str) -> None:
    # re.ASCII: the expression this replaced (re.IGNORECASE alone, and `$`) took "64M\u0131" (a dotless i,
    # whose upper case is I) for 64MiB and "64MB\n" for 64MB, values written into the Caddyfile as they came.
    match = re.fullmatch(r"([0-9]+)(|B|K|KB|KI|KIB|M|MB|MI|MIB|G|GB|GI|GIB)", raw, re.IGNORECASE | re.ASCII)
    expected = None if match is None or len(raw) > 20 else int(match[1]) * _UNITS[match[2].upper().rstrip("B")]
    try:
        got: int | None = config_parsers.caddy_size_bytes(raw)
    except ValueError:
        got = None
    assert got == expected


@scaled(1)
@given(st.one_of(words, st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()),
                 st.text(alphabet=st.sampled_from("0af-gA\n"), min_size=35, max_size=37)))
@example("f81d4fae-7dec-11d0-a765-00a0c91e6bf6\n")
@example("f81d4fae-7dec-11d0-a765-00a0c91e6bf-6")
@example("f81d4fae7-dec-11d0-a765-00a0c91e6bf6")
def test_team_uuids_are_what_the_expression_says(value: str) -> None:
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    assert names.is_team_uuid(value) == (re.fullmatch(uuid, value) is not None)


@scaled(1)
@given(st.one_of(words, st.text(alphabet=st.sampled_from("a=&%2F?#[] \n\"<>|{}^`\\"), max_size=30)))
@example("a=b\n")
@example("")
def test_verbatim_queries_are_what_the_expression_says(query: str) -> None:
    assert uri.is_verbatim_query(query) == (re.fullmatch(r"[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*", query) is not None)


@scaled(1)
@given(st.one_of(words, st.text(alphabet=st.sampled_from("0123456789.\n\u00b2\u0663-+ e"), max_size=16)))
@example("1\n")
@example("1.")
@example(".5")
@example("\u00b2")
def test_numbers_in_settings_are_what_the_expressions_say(raw: str) -> None:
    whole, decimal = config_parsers.whole(0, 10**12, "units"), config_parsers.decimal(0, 10**6, "units")
    for parse, expression in ((whole, r"[0-9]{1,12}"), (decimal, r"[0-9]{1,6}(\.[0-9]{1,6})?")):
        try:
            parse(raw)
            accepted = True
        except ValueError:
            accepted = False
        assert accepted == (re.fullmatch(expression, raw) is not None)


def _urlsplit_accepts(value: str) -> bool:
    """The check config_parsers made with urlsplit before it read URLs by hand."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return (parts.scheme in {"http", "https"} and bool(parts.hostname) and parts.username is None
            and parts.password is None and not parts.fragment and not parts.query)


_URL_EDGES = "ahttps:/[]@?#\\.-_1:80\t\n %\u00e9\u0663"
urls = st.one_of(st.text(alphabet=st.sampled_from(_URL_EDGES), max_size=40),
                 st.builds(lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
                           st.sampled_from(["http", "https", "HTTP", "ftp", ""]),
                           st.one_of(st.sampled_from(["example.com", "[::1]", "[fe80::1%25eth0]", "127.0.0.1",
                                                      "user:pw@host", "h_st", "\u00e9x.test", "", "[::1", "a b"]),
                                     st.text(alphabet=st.sampled_from(_URL_EDGES), max_size=12)),
                           st.sampled_from(["", ":", ":0", ":8080", ":65535", ":65536", ":080", ":-1", ":1a",
                                            ":\u0663"]),
                           st.one_of(st.sampled_from(["", "/", "/base", "/a?b", "/a#b", "/a\\b", "/a\tb", "/a b"]),
                                     st.text(alphabet=st.sampled_from(_URL_EDGES), max_size=12))))


@scaled(2)
@given(st.one_of(urls, st.builds(lambda url, query: f"{url}/x?{query}", urls, st.text(max_size=8))))
@example("https://host/a\nb")  # urlsplit drops the line break and took it; written on, it would split a line
@example("https://[::1]x/")
@example("https://API.Example.com:443/v2/x?a=b")
def test_a_url_is_split_as_urlsplit_splits_it(value: str) -> None:
    """What split_url accepts (a setting, or an upstream call's URL), urlsplit accepts too, and finds in
    it the same scheme, host, port, path and query."""
    split = config_parsers.split_url(value)
    if split is None:
        return
    parts = urlsplit(value)
    assert parts.username is None and parts.password is None and not parts.fragment
    assert split == (parts.scheme, parts.hostname, parts.port, parts.path + (f"?{parts.query}" if "?" in value else ""))
    assert config_parsers._is_url(value) == ("?" not in value) and (not config_parsers._is_url(value)
                                                                     or _urlsplit_accepts(value))


@scaled(2)
@given(st.one_of(st.text(max_size=30), st.text(alphabet=st.sampled_from("/%a\u00e9 ?#;=@:+~\x00\x7f"),
                                                 max_size=30)))
@example("/v2/databases/caf\u00e9 x/%2F")
def test_a_path_is_quoted_as_urllib_quotes_it(path: str) -> None:
    try:
        expected: str | None = quote(path, safe="/-._~!$&'()*+,;=:@")
    except UnicodeEncodeError:
        expected = None
    try:
        got: str | None = uri.quote_path(path)
    except UnicodeEncodeError:
        got = None
    assert got == expected


@pytest.mark.parametrize("value", ["http://localhost:8080", "https://api.digitalocean.com", "http://127.0.0.1:9000/base",
                                   "https://cloud.digitalocean.com", "http://[::1]:8080", "https://wid.example.test",
                                   "https://token.actions.githubusercontent.com", "http://wid_db:5000/a/b-c.d~e",
                                   "https://xn--bcher-kva.example", "https://b\u00fccher.example/p%C3%A9"])
def test_the_urls_operators_write_are_accepted(value: str) -> None:
    assert config_parsers._is_url(value) and _urlsplit_accepts(value)


@pytest.mark.parametrize("value", ["HTTPS://example.com", "https://user@example.com", "https://example.com?x=1",
                                   "https://example.com/#top", "https://example.com:99999", "https://exa mple.com",
                                   "https://example.com/a\tb", "https://example.com\\@evil.test", "https:///path",
                                   "https://[example.com]", "//example.com", "https://example.com:\u0663"])
def test_what_is_not_plainly_one_url_is_refused(value: str) -> None:
    assert not config_parsers._is_url(value)
