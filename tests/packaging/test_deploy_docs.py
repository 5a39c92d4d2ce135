"""README's "Deploying" can be followed as written: every command, option and parameter exists.

What can be checked offline is checked: each ``mlmoat`` command line's sub-commands and options
are in that command's own ``--help``; each ``sam deploy`` option is in SAM CLI's ``--help`` (the
pinned SAM CLI of ``.venv-sam``); every ``--config-env`` is an environment of samconfig.toml with
a region; every ``--parameter-overrides`` name is a parameter of template.yaml.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mlmoat.local.template import load_template

REPO = Path(__file__).resolve().parents[2]
SAM = REPO / ".venv-sam" / "bin" / "sam"


def _section() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Deploying")
    return readme[start : readme.index("\n## ", start + 1)]


def _command_lines() -> list[list[str]]:
    lines: list[list[str]] = []
    for block in re.findall(r"```sh\n(.*?)```", _section(), flags=re.S):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            code = line.split("  #")[0].strip()
            if code:
                lines.append(shlex.split(code))
    return lines


def _help(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, (argv, out.stderr[-2000:])
    return out.stdout


def _options(tokens: list[str]) -> set[str]:
    return {token.split("=")[0] for token in tokens if token.startswith("--")}


def test_the_section_shows_the_commands_a_first_deploy_needs() -> None:
    tools = [" ".join(tokens[:2]) for tokens in _command_lines()]
    assert "make build" in tools
    assert ".venv-sam/bin/sam deploy" in tools
    assert ".venv/bin/mlmoat keys" in tools
    assert any("--guided" in tokens for tokens in _command_lines())


def test_every_mlmoat_command_and_option_is_in_its_help() -> None:
    mlmoat = [t for t in _command_lines() if t[0].endswith("bin/mlmoat")]
    assert mlmoat
    for tokens in mlmoat:
        base = [sys.executable, "-m", "mlmoat.cli", tokens[1]]
        text = _help([*base, "--help"])
        choices = re.search(r"\{([a-z,-]+)\}", text)
        subs = choices.group(1).split(",") if choices else []
        sub = next((t for t in tokens[2:] if t in subs), None)
        if sub is not None:
            text += _help([*base, sub, "--help"])
        for option in _options(tokens):
            assert option in text, (tokens, option)


@pytest.mark.skipif(not SAM.exists(), reason="SAM CLI's virtualenv (make venv-sam)")
def test_every_sam_option_config_env_and_parameter_exists() -> None:
    sam = [t for t in _command_lines() if t[0].endswith("bin/sam")]
    assert sam
    deploy_help = _help([str(SAM), "deploy", "--help"])
    config = tomllib.loads((REPO / "samconfig.toml").read_text())
    parameters = set(load_template(REPO / "template.yaml")["Parameters"])
    for tokens in sam:
        assert tokens[1] == "deploy", tokens
        for option in _options(tokens):
            assert option in deploy_help, (tokens, option)
        if "--config-env" in tokens:
            env = tokens[tokens.index("--config-env") + 1]
            assert config[env]["global"]["parameters"]["region"], env
        if "--parameter-overrides" in tokens:
            for pair in tokens[tokens.index("--parameter-overrides") + 1 :]:
                if pair.startswith("--"):
                    break
                assert pair.split("=")[0] in parameters, pair
    assert config["default"]["global"]["parameters"]["region"]
    # every parameter the prepared environments override exists in the template
    for env in ("default", "prod"):
        overrides = config[env]["deploy"]["parameters"]["parameter_overrides"]
        for pair in shlex.split(overrides):
            assert pair.split("=")[0] in parameters, (env, pair)
