"""The cloud-init step the proxy adds to a Droplet's user_data, merged with the user's own.

Ours is a cloud-config that writes the Droplet-side script (`droplet/wid-droplet.sh`) and its systemd
timer, and runs `wid-droplet provision` first in `runcmd`. The user's user_data keeps working:

- none: ours alone;
- `#cloud-config` YAML: one merged document; our files come first in `write_files` and our step
  first in `runcmd`, theirs keep their order, every other key is theirs unchanged;
- anything else cloud-init understands (a `#!` script, `#include`, `#cloud-boothook`, a jinja
  template, `#cloud-config-archive`, a MIME multi-part of its own): a MIME multi-part message whose
  parts are theirs, in order, then ours with a `Merge-Type` that puts our `write_files` and `runcmd`
  entries first whatever cloud-config parts theirs contain. A script of theirs without a file name
  is named `user-data` (`user-data-NNN` in a multi-part), which cloud-init runs after the `runcmd`
  script (it runs scripts in name order), so the token exists when their scripts start.

PyYAML is imported only to merge a user's cloud-config; every other case is standard library.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from functools import cache, lru_cache
from typing import Any

from wid.core.errors import InvalidRequest

SCRIPT_PATH = "/usr/local/sbin/wid-droplet"
SERVICE_PATH = "/etc/systemd/system/wid-token-refresh.service"
TIMER_PATH = "/etc/systemd/system/wid-token-refresh.timer"
OUR_PATHS = frozenset({SCRIPT_PATH, SERVICE_PATH, TIMER_PATH})
# DigitalOcean refuses user_data over 64 KiB.
USER_DATA_LIMIT = 64 * 1024
# cloud-init merges a later cloud-config part into the earlier ones with the later part's mergers:
# ours, last, prepends its list entries and never replaces a key of theirs.
OUR_MERGE_TYPE = "dict(no_replace,recurse_list)+list(prepend)+str()"
USER_SCRIPT_NAME = "user-data"
_MIME_SNIFF = re.compile(r"mime-version:", re.IGNORECASE)


# A plain path, as lib/wid/store/storage.py's MIGRATIONS_DIR: importlib.resources imports tempfile and shutil.
DROPLET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "droplet")


@cache
def droplet_file(name: str) -> str:
    """A file of the Droplet-side package data (`wid/droplet/`)."""
    with open(os.path.join(DROPLET_DIR, name), encoding="utf-8") as script:
        return script.read()


def _files() -> list[tuple[str, str, str]]:
    return [
        (SCRIPT_PATH, "0755", droplet_file("wid-droplet.sh")),
        (SERVICE_PATH, "0644", droplet_file("wid-token-refresh.service")),
        (TIMER_PATH, "0644", droplet_file("wid-token-refresh.timer")),
    ]


def provision_command(base_url: str, team_uuid: str, token: str) -> list[str]:
    return ["sh", SCRIPT_PATH, "provision", base_url, team_uuid, token]


def our_config(base_url: str, team_uuid: str, token: str) -> dict[str, Any]:
    """Our cloud-config as data (what `render_ours` spells as YAML)."""
    return {
        "write_files": [{"path": path, "owner": "root:root", "permissions": mode, "content": content}
                        for path, mode, content in _files()],
        "runcmd": [provision_command(base_url, team_uuid, token)],
    }


def _block(text: str, indent: str) -> str:
    if not text.endswith("\n") or any(line != line.rstrip() for line in text.splitlines()):
        raise ValueError("package data must end with a newline and have no trailing spaces")
    return "".join(f"{indent}{line}\n" if line else "\n" for line in text.splitlines())


def render_ours(base_url: str, team_uuid: str, token: str) -> str:
    """Our cloud-config as readable YAML, written by hand so no YAML library is needed."""
    lines = ["#cloud-config",
             f"# Added by the workload identity proxy {json.dumps(base_url)}: at first boot this Droplet",
             "# proves its SSH host key and receives its workload identity token (see wid-droplet).",
             "write_files:"]
    out = "\n".join(lines) + "\n"
    for path, mode, content in _files():
        out += (f"  - path: {json.dumps(path)}\n    owner: \"root:root\"\n    permissions: \"{mode}\"\n"
                f"    content: |\n{_block(content, '      ')}")
    command = ", ".join(json.dumps(arg) for arg in provision_command(base_url, team_uuid, token))
    out += f"runcmd:\n  - [{command}]\n"
    return out


def kind_of(user_data: str) -> str:
    """'none', 'cloud-config', 'mime' or 'other' (what cloud-init would sniff from the start)."""
    if not user_data.strip():
        return "none"
    if _MIME_SNIFF.search(user_data[:4096]):
        return "mime"
    first = user_data.split("\n", 1)[0].rstrip("\r")
    if first.startswith(("#cloud-config-archive", "#cloud-config-jsonp")):
        return "other"
    if first.startswith("#cloud-config") and first[len("#cloud-config"):].strip() == "":
        return "cloud-config"
    return "other"


def merge(user_data: Any, base_url: str, team_uuid: str, token: str) -> str:
    """The user_data to send upstream: ours combined with the user's (400 when theirs cannot be kept)."""
    if user_data is not None and not isinstance(user_data, str):
        raise InvalidRequest("user_data must be a string")
    user = user_data or ""
    kind = kind_of(user)
    if kind == "none":
        combined = render_ours(base_url, team_uuid, token)
    elif kind == "cloud-config":
        combined = _merge_cloud_config(user, our_config(base_url, team_uuid, token))
    else:
        combined = _multipart(user, kind, render_ours(base_url, team_uuid, token))
    size = len(combined.encode("utf-8"))
    if size > USER_DATA_LIMIT:
        raise InvalidRequest(f"user_data with the proxy's provisioning step would be {size} bytes; DigitalOcean "
                             f"accepts at most {USER_DATA_LIMIT} (the step takes {size - len(user.encode())} of them)")
    return combined


# -- cloud-config: one merged document ----------------------------------------------------------------

def _merge_cloud_config(user: str, ours: dict[str, Any]) -> str:
    import yaml  # only here: a user's cloud-config is the one thing that needs a YAML parser

    too_deep = "user_data's #cloud-config is nested too deeply to be merged"
    try:
        theirs = yaml.safe_load(user)
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"user_data starts with #cloud-config but is not valid YAML: "
                             f"{str(exc).splitlines()[0]}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise InvalidRequest(too_deep) from None
    if theirs is None:
        theirs = {}
    if not isinstance(theirs, dict):
        raise InvalidRequest("user_data's #cloud-config must be a YAML mapping (keys such as runcmd, packages)")
    merged: dict[str, Any] = {}
    for key in ("write_files", "runcmd"):
        value = theirs.get(key)
        if value is not None and not isinstance(value, list):
            raise InvalidRequest(f"user_data's cloud-config key {key} must be a list")
    for entry in theirs.get("write_files") or []:
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and entry["path"] in OUR_PATHS:
            raise InvalidRequest(f"user_data's write_files may not write {entry['path']}: the proxy's provisioning "
                                 "step installs it")
    merged["write_files"] = ours["write_files"] + list(theirs.get("write_files") or [])
    merged["runcmd"] = ours["runcmd"] + list(theirs.get("runcmd") or [])
    for key, value in theirs.items():
        if key not in merged:
            merged[key] = value
    try:
        return "#cloud-config\n" + yaml.dump(merged, Dumper=_dumper(), sort_keys=False, default_flow_style=False,
                                             allow_unicode=True, width=4096)
    except RecursionError:
        raise InvalidRequest(too_deep) from None


@lru_cache(maxsize=1)
def _dumper() -> Any:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> Any:
        style: str | None = None
        if "\x85" in value:  # with allow_unicode, PyYAML writes NEL raw unless double-quoted; it reads back as a break
            style = '"'
        elif "\n" in value and all(line == line.rstrip() for line in value.splitlines()):
            style = "|"
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return Dumper


# -- everything else: a MIME multi-part message ----------------------------------------------------------

def _multipart(user: str, kind: str, ours: str) -> str:
    from email import message_from_string
    from email.message import Message
    from email.mime.multipart import MIMEMultipart

    outer = MIMEMultipart()
    if kind == "mime":
        parsed = message_from_string(user)
        payload = parsed.get_payload()
        parts: list[Message] = [p for p in payload if isinstance(p, Message)] if parsed.is_multipart() else [parsed]
        if not parts:
            raise InvalidRequest("user_data is a MIME multi-part message without parts")
        for number, part in enumerate(parts, 1):
            if not part.is_multipart() and not part.get_filename():
                # cloud-init would call it part-NNN, and run such a script before the runcmd script.
                name = f"{USER_SCRIPT_NAME}-{number:03d}"
                if part.get("Content-Disposition"):
                    part.set_param("filename", name, header="Content-Disposition")
                else:
                    part.add_header("Content-Disposition", "attachment", filename=name)
            outer.attach(part)
    else:
        theirs = _text_part(user, "plain")  # text/plain: cloud-init sniffs the type from the content
        theirs.add_header("Content-Disposition", "attachment", filename=USER_SCRIPT_NAME)
        outer.attach(theirs)
    mine = _text_part(ours, "cloud-config")
    mine.add_header("Content-Disposition", "attachment", filename="wid-provisioning.cfg")
    mine.add_header("Merge-Type", OUR_MERGE_TYPE)
    outer.attach(mine)
    outer.set_boundary(f"==wid-{secrets.token_hex(12)}==")
    return outer.as_string()


def _text_part(text: str, subtype: str) -> Any:
    from email.mime.text import MIMEText

    # 7bit when ASCII without a CR (readable); otherwise UTF-8 in base64, which keeps every character intact
    # (in a 7bit part the email generator would rewrite a CR, or CRLF, as the line break it writes).
    return MIMEText(text, subtype, "us-ascii" if text.isascii() and "\r" not in text else "utf-8")
