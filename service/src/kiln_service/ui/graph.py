"""The placement picture: the partitioned graph as SVG, drawn from the tracer's report.

Items are laid out top to bottom in the order data flows: each subgraph is a coloured group
(holding its ops as chips, or only its op counts when the graph is large), each op left on CPU a
grey box whose reason shows on hover or focus (an SVG ``<title>`` without JavaScript, the page's
tooltip with it). An arrow joins each CPU op to the subgraph that reads its output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Any

__all__ = ["COLLAPSE_ABOVE", "placement_svg"]

#: draw subgraphs collapsed (op counts, no chips) when the graph has more ops than this
COLLAPSE_ABOVE = 80
#: at most this many CPU ops get a box of their own; the rest are summed up in one box
MAX_CPU_BOXES = 120
#: colour-blind-safe fills (Okabe-Ito), dark enough for white text (WCAG AA at this size)
_PALETTE = ("#0b5c8a", "#8a4b00", "#006e52", "#7a2e63", "#5b5b00", "#2f4d8a")
_WIDTH, _ROW, _CHIP_W, _CHIP_H, _PAD = 760, 34, 140, 22, 10


@dataclass
class _Item:
    kind: str  # "subgraph" | "cpu" | "more"
    label: str
    detail: str
    chips: list[str] = field(default_factory=list)
    colour: str = "#5f6368"
    y: int = 0
    height: int = _ROW


def _producer(tensor: str) -> str:
    name = tensor.split(":")[0]
    return name[1:] if name.startswith("^") else name


def _order(subgraphs: Sequence[Mapping[str, Any]], cpu_ops: Sequence[Mapping[str, Any]],
           collapsed: bool) -> tuple[list[_Item], list[tuple[str, int]]]:
    """Items in data-flow order and the edges (CPU op name → subgraph item index)."""
    cpu_by_name = {op["name"]: op for op in cpu_ops[:MAX_CPU_BOXES]}
    placed: dict[str, int] = {}
    items: list[_Item] = []
    edges: list[tuple[str, int]] = []

    def add_cpu(op: Mapping[str, Any]) -> None:
        placed[op["name"]] = len(items)
        items.append(_Item("cpu", str(op["name"]), f"{op['op']} on CPU: {op['reason']}"))

    for index, sub in enumerate(subgraphs):
        for tensor in sub.get("inputs") or []:
            producer = _producer(str(tensor.get("name", "")))
            if producer in cpu_by_name and producer not in placed:
                add_cpu(cpu_by_name[producer])
        counts = Counter(sub.get("op_types") or {})
        summary = ", ".join(f"{op} x{n}" for op, n in counts.most_common(6))
        status = str(sub.get("status"))
        ops = [str(o) for o in sub.get("ops") or []]
        item = _Item("subgraph", str(sub.get("name")), f"{len(ops)} ops, {status}: {summary}",
                     chips=[] if collapsed else ops, colour=_PALETTE[index % len(_PALETTE)]
                     if status == "compiled" else "#5f6368")
        sub_index = len(items)
        items.append(item)
        for tensor in sub.get("inputs") or []:
            producer = _producer(str(tensor.get("name", "")))
            if producer in cpu_by_name:
                edges.append((producer, sub_index))
    for op in cpu_ops[:MAX_CPU_BOXES]:
        if op["name"] not in placed:
            add_cpu(op)
    if len(cpu_ops) > MAX_CPU_BOXES:
        items.append(_Item("more", f"{len(cpu_ops) - MAX_CPU_BOXES} more CPU ops",
                           "listed in the table below"))
    return items, edges


def _layout(items: list[_Item]) -> int:
    per_row = max(1, (_WIDTH - 2 * _PAD - 20) // (_CHIP_W + 6))
    y = _PAD
    for item in items:
        rows = -(-len(item.chips) // per_row) if item.chips else 0
        item.y, item.height = y, _ROW + rows * (_CHIP_H + 4)
        y += item.height + 12
    return y + _PAD


def _short(text: str, limit: int, *, tail: bool = True) -> str:
    """``text`` cut to ``limit`` characters, keeping its end (names) or its start (details)."""
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1):] if tail else text[:limit - 1] + "…"


def _draw(item: _Item) -> str:
    x, w = 60, _WIDTH - 60 - _PAD
    tip = escape(f"{item.label}: {item.detail}", quote=True)
    cls = {"subgraph": "sg", "cpu": "cpu-op", "more": "more"}[item.kind]
    parts = [f'<g class="{cls}" tabindex="0" role="img" aria-label="{tip}" data-tip="{tip}" '
             f'data-name="{escape(item.label, quote=True)}"><title>{tip}</title>',
             f'<rect x="{x}" y="{item.y}" width="{w}" height="{item.height}" rx="6" '
             f'fill="{item.colour}"/>',
             f'<text x="{x + 10}" y="{item.y + 21}" fill="#fff">{escape(_short(item.label, 44))} '
             f'<tspan fill="#f1f3f4">— {escape(_short(item.detail, 60, tail=False))}</tspan>'
             '</text>']
    per_row = max(1, (w - 20) // (_CHIP_W + 6))
    for n, chip in enumerate(item.chips):
        cx = x + 10 + (n % per_row) * (_CHIP_W + 6)
        cy = item.y + _ROW + (n // per_row) * (_CHIP_H + 4)
        short = _short(chip, 20)
        parts.append(f'<rect x="{cx}" y="{cy}" width="{_CHIP_W}" height="{_CHIP_H}" rx="3" '
                     f'fill="#ffffff" fill-opacity="0.92"/><text x="{cx + 5}" y="{cy + 15}" '
                     f'fill="#202124" font-size="11">{escape(short)}</text>')
    parts.append("</g>")
    return "".join(parts)


def placement_svg(tracer_report: Mapping[str, Any] | None) -> tuple[str, bool]:
    """The SVG markup of a tracer report's placement, and whether subgraphs were collapsed."""
    report = tracer_report or {}
    subgraphs = list(report.get("subgraphs") or [])
    cpu_ops = list(report.get("cpu_ops") or [])
    collapsed = int(report.get("ops_total") or 0) > COLLAPSE_ABOVE
    items, edges = _order(subgraphs, cpu_ops, collapsed)
    height = _layout(items)
    index_of = {item.label: i for i, item in enumerate(items) if item.kind == "cpu"}
    arrows = []
    for producer, target in edges:
        source = items[index_of[producer]]
        y1, y2 = source.y + source.height // 2, items[target].y + 17
        arrows.append(f'<path d="M60 {y1} C 20 {y1}, 20 {y2}, 58 {y2}" fill="none" '
                      f'stroke="#3c4043" stroke-width="1.5" marker-end="url(#arrow)"/>')
    body = "".join(_draw(item) for item in items)
    svg = (f'<svg class="placement" viewBox="0 0 {_WIDTH} {height}" width="100%" '
           f'role="group" aria-label="Partitioned graph: {len(subgraphs)} subgraphs, '
           f'{len(cpu_ops)} CPU ops" font-family="system-ui, sans-serif" font-size="13">'
           '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
           'markerHeight="7" orient="auto"><path d="M0 0 L10 5 L0 10 z" fill="#3c4043"/></marker>'
           f'</defs>{"".join(arrows)}{body}</svg>')
    return svg, collapsed
