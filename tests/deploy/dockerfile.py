"""A small reader of the project's Dockerfile: stages and their instructions, for the checks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def logical_lines(text: str) -> list[str]:
    """Instructions with their `\\` continuations joined; comment lines dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    return lines


def read_stages(path: Path) -> dict[str, Stage]:
    """Stages by name (`FROM base AS name`), with ARGs of the preamble substituted into the bases."""
    preamble: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical_lines(path.read_text()):
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: preamble.get(m.group(1), m.group(0)), match.group(1))
            stage = Stage(match.group(2), base)
            stages[stage.name] = stage
        elif stage is None:
            if instruction == "ARG" and "=" in args:
                key, _, value = args.partition("=")
                preamble[key.strip()] = value.strip()
        else:
            stage.instructions.append((instruction, args.strip()))
    return stages
