"""Fuzz the cloud-config merge (wid.service.cloudinit.merge): whatever user_data a Droplet create carries,
the only error is one the web edge answers with 400; otherwise the result fits DigitalOcean's limit, our
provisioning step comes first, and the user's own configuration, scripts and parts come through unchanged."""

from __future__ import annotations

import email
from email.message import Message
from typing import Any

import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.budget import scaled
from wid.core.errors import WidError
from wid.service import cloudinit
from wid.web.errors import status_of

BASE, TEAM, TOKEN = "https://wid.example.test", "f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "eyJh.eyJz.c2ln"
OURS = cloudinit.our_config(BASE, TEAM, TOKEN)

_TEXT = st.one_of(st.text(max_size=12), st.sampled_from(
    ["", " ", "a\n", "a\nb", "a\n\x85b", " lead\nx", "trail \nx", "x\n\n", "\ttab\n", "a\r\nb", "\x85", "\u2028x\ny",
     "- x", "#cloud-config", "'q'", '"', "null", "yes", "0x1f", "1e3", "~", "|", "---", "...", "\ufeff", "é✓\n"]))
_SCALARS = st.one_of(_TEXT, st.integers(), st.floats(allow_nan=False), st.booleans(), st.none())
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(_TEXT, st.integers()), inner, max_size=3)), max_leaves=10)
_FILES = st.lists(st.one_of(
    st.fixed_dictionaries({"path": st.one_of(st.sampled_from([*sorted(cloudinit.OUR_PATHS), "/etc/motd"]), _VALUES),
                           "content": _TEXT}), _VALUES), max_size=3)
configs = st.fixed_dictionaries({}, optional={"runcmd": st.one_of(st.lists(_VALUES, max_size=3), _VALUES),
                                              "write_files": st.one_of(_FILES, _VALUES),
                                              "packages": _VALUES, "bootcmd": _VALUES, "users": _VALUES})
cloud_configs = st.builds(lambda data, flow: "#cloud-config\n" + yaml.safe_dump(data, default_flow_style=flow),
                          configs, st.booleans())
_HOSTILE_YAML = ["a: &x [1]\nb: *x\n", "a: !!binary aGk=\n", "a: !!set {x}\n", "a: 2001-12-14\n", "? [a]\n: b\n",
                 "a: !!python/object:os.system x\n", "<<: {runcmd: [x]}\n", "a: " + "[" * 200 + "]" * 200 + "\n",
                 "a: " + "[" * 1000 + "\n", "a: " + "[" * 1000 + "]" * 1000 + "\n", "a: " + "{a: " * 900 + "}" * 900,
                 "runcmd: *y\n", "write_files:\n- path: [a]\n", "write_files:\n- path: {a: 1}\n", "1: x\n", "\t: x\n",
                 "a: b: c\n", "%YAML 1.1\n---\na: 1\n", "a: 1\n---\nb: 2\n", "a: .nan\n", "a: .inf\n"]
hostile = st.sampled_from(_HOSTILE_YAML).map(lambda text: "#cloud-config\n" + text)
_SCRIPT = st.builds(lambda first, body: first + "\n" + body, st.sampled_from(
    ["#!/bin/sh", "#include", "#cloud-boothook", "## template: jinja", "#cloud-config-archive", "#cloud-configX",
     "#part-handler", "MIME-Version: 1.0", ""]), _TEXT)


@st.composite
def multiparts(draw: st.DrawFn) -> str:
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    outer = MIMEMultipart()
    for _ in range(draw(st.integers(0, 3))):
        part = MIMEText(draw(_TEXT), draw(st.sampled_from(["cloud-config", "x-shellscript", "plain"])))
        if draw(st.booleans()):
            # A line break in a header parameter is no MIME a client could send through email: Python's
            # generator refuses to write one (HeaderWriteError since CVE-2024-6923's fix, in Debian's 3.11.2).
            filename = "".join(c for c in draw(_TEXT) if c not in "\r\n") or "x"
            part.add_header("Content-Disposition", "attachment", filename=filename)
        outer.attach(part)
    outer.set_boundary(f"==boundary-{draw(st.integers(0, 99))}==")  # email would draw one from `random`
    text = outer.as_string()
    cut = draw(st.one_of(st.just(len(text)), st.integers(0, len(text))))
    return text[:cut]


user_datas = st.one_of(st.none(), st.integers(), st.just([]), cloud_configs, hostile, _SCRIPT, multiparts(), st.text())


def _payload(part: Message) -> str:
    raw = part.get_payload(decode=True)
    assert isinstance(raw, bytes)
    return raw.decode(part.get_content_charset() or "us-ascii")


@scaled(2)
@given(user_datas)
@example("#cloud-config\nwrite_files:\n- path: [a]\n")  # found: TypeError (an unhashable path)
@example("#cloud-config\na: " + "[" * 1000 + "]" * 1000 + "\n")  # found: RecursionError in PyYAML
@example('#cloud-config\np: "\\N"')  # found: the user's NEL (U+0085) came back as a space
@example("0\r")  # found: a script's CR (and CRLF) came back as LF
@example("#!/bin/sh\r\necho a\rb\n")
@example('#cloud-config\nwrite_files:\n- path: /etc/x\n  content: "a\\nb\\N"\n')
def test_merge_refuses_with_400_or_puts_our_step_first(user_data: Any) -> None:
    try:
        merged = cloudinit.merge(user_data, BASE, TEAM, TOKEN)
    except WidError as exc:
        assert status_of(exc) == 400 and exc.message
        return
    assert len(merged.encode()) <= cloudinit.USER_DATA_LIMIT
    kind = cloudinit.kind_of(user_data or "")
    if kind == "none":
        assert merged == cloudinit.render_ours(BASE, TEAM, TOKEN)
    elif kind == "cloud-config":
        theirs = yaml.safe_load(user_data) or {}
        expected = {"write_files": OURS["write_files"] + (theirs.get("write_files") or []),
                    "runcmd": OURS["runcmd"] + (theirs.get("runcmd") or [])}
        expected.update({key: value for key, value in theirs.items() if key not in expected})
        assert yaml.safe_load(merged) == expected
        assert not {entry.get("path") for entry in theirs.get("write_files") or [] if isinstance(entry, dict)
                    and isinstance(entry.get("path"), str)} & cloudinit.OUR_PATHS
    else:
        payload = email.message_from_string(merged).get_payload()
        assert isinstance(payload, list) and payload
        parts = [part for part in payload if isinstance(part, Message)]
        ours = parts[-1]
        assert ours["Merge-Type"] == cloudinit.OUR_MERGE_TYPE and ours.get_content_type() == "text/cloud-config"
        assert yaml.safe_load(_payload(ours)) == OURS
        if kind == "other":
            assert [_payload(part) for part in parts[:-1]] == [user_data]
