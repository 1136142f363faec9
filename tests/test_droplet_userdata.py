"""The generated cloud-init step: validated by cloud-init's own schema validator and processed by
cloud-init's own user-data code; the Droplet-side script and systemd units checked statically; the
identity rule for `oidc-sub:` tags."""

from __future__ import annotations

import re
import shutil
import subprocess
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.sshd import DROPLET_PATH, cloud_init_view
from wid.core.errors import WidError
from wid.service import cloudinit, provisioning
from wid.web.errors import status_of

BASE = "https://wid.example.test"
TEAM = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
OURS = ["sh", "/usr/local/sbin/wid-droplet", "provision", BASE, TEAM, TOKEN]
OUR_FILES = ["/usr/local/sbin/wid-droplet", "/etc/systemd/system/wid-token-refresh.service",
             "/etc/systemd/system/wid-token-refresh.timer"]


def schema_valid(text: str, tmp: Path) -> None:
    path = tmp / "cloud-config.yaml"
    path.write_text(text)
    out = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and "Valid cloud-config" in out.stdout, out.stdout + out.stderr


def merged_config(user_data: str) -> dict[str, Any]:
    """The single cloud-config cloud-init assembles from all parts."""
    return yaml.safe_load(str(cloud_init_view(user_data)["cloud_config"])) or {}


def test_ours_alone_is_valid_readable_cloud_config(tmp_path: Path) -> None:
    text = cloudinit.merge(None, BASE, TEAM, TOKEN)
    assert cloudinit.merge("", BASE, TEAM, TOKEN) == text
    assert text.startswith("#cloud-config\n")
    schema_valid(text, tmp_path)
    data = yaml.safe_load(text)
    assert data == cloudinit.our_config(BASE, TEAM, TOKEN)
    assert data["runcmd"] == [OURS]
    assert [f["path"] for f in data["write_files"]] == OUR_FILES
    script = Path(cloudinit.__file__).parents[1] / "droplet" / "wid-droplet.sh"
    assert data["write_files"][0]["content"] == script.read_text()
    assert "content: |\n      #!/bin/sh\n" in text  # the script is readable in the user_data
    assert merged_config(text)["runcmd"] == [OURS]


def test_user_cloud_config_is_merged_ours_first(tmp_path: Path) -> None:
    theirs = ("#cloud-config\n# a comment\npackages:\n  - nginx\nruncmd:\n  - echo one\n  - [sh, -c, 'echo two']\n"
              "write_files:\n  - path: /etc/motd\n    content: hello\nusers:\n  - default\n")
    text = cloudinit.merge(theirs, BASE, TEAM, TOKEN)
    schema_valid(text, tmp_path)
    data = yaml.safe_load(text)
    assert data["runcmd"] == [OURS, "echo one", ["sh", "-c", "echo two"]]
    assert [f["path"] for f in data["write_files"]] == [*OUR_FILES, "/etc/motd"]
    assert data["packages"] == ["nginx"] and data["users"] == ["default"]
    assert merged_config(text)["runcmd"][0] == OURS  # cloud-init reads it the same way
    empty = yaml.safe_load(cloudinit.merge("#cloud-config\n", BASE, TEAM, TOKEN))
    assert empty == cloudinit.our_config(BASE, TEAM, TOKEN)
    unicode = cloudinit.merge("#cloud-config\nruncmd:\n  - echo héllo ✓\n", BASE, TEAM, TOKEN)
    assert yaml.safe_load(unicode)["runcmd"][1] == "echo héllo ✓"
    schema_valid(unicode, tmp_path)


def test_user_cloud_config_that_cannot_be_kept_is_refused() -> None:
    for bad, why in [("#cloud-config\nruncmd: [oops\n", "not valid YAML"),
                     ("#cloud-config\n- just\n- a list\n", "mapping"),
                     ("#cloud-config\nruncmd: echo hi\n", "runcmd must be a list"),
                     ("#cloud-config\nwrite_files:\n  - path: /usr/local/sbin/wid-droplet\n    content: x\n",
                      "may not write")]:
        with pytest.raises(WidError) as refused:
            cloudinit.merge(bad, BASE, TEAM, TOKEN)
        assert status_of(refused.value) == 400 and why in refused.value.message
    with pytest.raises(WidError, match="must be a string"):
        cloudinit.merge(7, BASE, TEAM, TOKEN)
    with pytest.raises(WidError) as large:
        cloudinit.merge("#!/bin/sh\n" + "#" * 60000, BASE, TEAM, TOKEN)
    assert status_of(large.value) == 400 and "65536" in large.value.message


@pytest.mark.parametrize("theirs", [
    "#!/bin/bash\necho user script\n",
    "#cloud-boothook\n#!/bin/sh\necho early\n",
    "## template: jinja\n#cloud-config\nruncmd:\n  - echo {{ v1.instance_id }}\n",
    "#include\nhttps://example.com/user-data.txt\n",
    "#cloud-config-archive\n- type: text/cloud-config\n  content: |\n    runcmd: [echo archived]\n",
])
def test_other_formats_are_combined_as_mime(theirs: str, tmp_path: Path) -> None:
    text = cloudinit.merge(theirs, BASE, TEAM, TOKEN)
    assert cloudinit.kind_of(theirs) == "other"
    assert "multipart/mixed" in text.splitlines()[0]
    view = cloud_init_view(text) if not theirs.startswith("#include") else None
    if view is not None:
        assert view["parts"][-1] == ["text/cloud-config", "wid-provisioning.cfg"]
        config = yaml.safe_load(str(view["cloud_config"]))
        assert config["runcmd"][0] == OURS
        schema_valid("#cloud-config\n" + yaml.safe_dump(config), tmp_path)
    if theirs.startswith("#!"):
        assert view is not None and view["scripts"] == ["user-data"]
        assert sorted(["runcmd", "user-data"]) == ["runcmd", "user-data"]  # ours runs first


def test_a_users_own_multipart_keeps_its_parts_and_our_runcmd_comes_first(tmp_path: Path) -> None:
    message = MIMEMultipart()
    message.attach(MIMEText("#cloud-config\nruncmd:\n  - echo theirs-1\n  - echo theirs-2\n", "cloud-config"))
    message.attach(MIMEText("#!/bin/sh\necho script\n", "x-shellscript"))
    text = cloudinit.merge(message.as_string(), BASE, TEAM, TOKEN)
    view = cloud_init_view(text)
    assert [p[0] for p in view["parts"]] == ["text/cloud-config", "text/x-shellscript",
                                             "text/cloud-config"]
    config = yaml.safe_load(str(view["cloud_config"]))
    assert config["runcmd"] == [OURS, "echo theirs-1", "echo theirs-2"]
    assert [f["path"] for f in config["write_files"]] == OUR_FILES
    assert view["scripts"] == ["user-data-002"]  # named to run after the runcmd script
    schema_valid("#cloud-config\n" + yaml.safe_dump(config), tmp_path)


def test_non_ascii_script_survives_the_multipart() -> None:
    theirs = "#!/bin/sh\necho 'grüße'\n"
    view = cloud_init_view(cloudinit.merge(theirs, BASE, TEAM, TOKEN))
    assert view["parts"][0] == ["text/x-shellscript", "user-data"]


# -- the Droplet-side files ---------------------------------------------------------------------------------------

def test_droplet_script_is_posix_sh_and_needs_no_jq() -> None:
    script = Path(cloudinit.__file__).parents[1] / "droplet" / "wid-droplet.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    if shutil.which("dash"):
        assert subprocess.run(["dash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\bjq\b", code)
    assert "[[" not in text and "function " not in text and "local " not in text  # no bashisms
    tools = set(re.findall(r"command -v \"\$tool\"|for tool in ([a-z0-9 -]+);", text)[0].split())
    assert tools == {"curl", "python3", "ssh-keygen"}
    python = re.search(r"\nPY='\n(.*?)\n'\n", text, re.S)
    assert python is not None
    compile(python.group(1), "wid-droplet helper", "exec")  # the embedded helper is valid Python


def test_droplet_script_refuses_bad_usage(tmp_path: Path) -> None:
    script = Path(cloudinit.__file__).parents[1] / "droplet" / "wid-droplet.sh"
    env = {"PATH": DROPLET_PATH, "WID_DROPLET_ROOT": str(tmp_path)}
    for args, message in [([], "usage"), (["provision"], "usage"), (["refresh"], "provision first"),
                          (["recover"], "provision first")]:
        out = subprocess.run(["sh", str(script), *args], env=env, capture_output=True, text=True)
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)


def test_systemd_units_verify(tmp_path: Path) -> None:
    folder = Path(cloudinit.__file__).parents[1] / "droplet"
    units = tmp_path / "units"
    units.mkdir()
    for name in ("wid-token-refresh.service", "wid-token-refresh.timer"):
        text = (folder / name).read_text()
        # systemd-analyze checks that ExecStart's program exists: point it at this machine's sh.
        (units / name).write_text(text.replace("/usr/local/sbin/wid-droplet", str(folder / "wid-droplet.sh")))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(units / "wid-token-refresh.timer"),
                          str(units / "wid-token-refresh.service")], capture_output=True, text=True)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if "wid-token-refresh" in line and "Unit is bound to inactive" not in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
    timer = (folder / "wid-token-refresh.timer").read_text()
    found = re.search(r"OnUnitActiveSec=(\d+)min", timer)
    assert found is not None
    interval = int(found.group(1))
    assert interval * 60 * 2 < provisioning.WORKLOAD_TTL  # at least two chances before a token expires


# -- who a Droplet is: the oidc-sub rule ---------------------------------------------------------------------------

def test_subject_rule_for_several_tags() -> None:
    sub = provisioning.subject_for
    assert sub(TEAM, ["oidc-sub:role:ex-database-and-spaces-keys-access"]) == \
        f"actx:{TEAM}:role:ex-database-and-spaces-keys-access"  # the articles' example
    both = ["web", "oidc-sub:role:web", "oidc-sub:env:prod"]
    assert sub(TEAM, both) == f"actx:{TEAM}:env:prod:role:web"
    assert sub(TEAM, list(reversed(both))) == sub(TEAM, both)  # the order of tags never matters
    assert sub(TEAM, ["oidc-sub:role:b", "oidc-sub:role:a", "oidc-sub:role:a"]) == f"actx:{TEAM}:role:a:role:b"
    for bad in (["oidc-sub:role"], ["oidc-sub:role:a:b"], ["oidc-sub:actx:other-team"], ["oidc-sub::x"],
                ["oidc-sub:ACTX:x"]):
        with pytest.raises(WidError) as refused:
            sub(TEAM, bad)
        assert status_of(refused.value) == 403
    with pytest.raises(WidError, match="no oidc-sub"):
        sub(TEAM, ["web", "prod"])
