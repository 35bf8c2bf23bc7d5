# ruff: noqa: RUF001  (the Chinese text has its own punctuation)
"""The answers of the instruction-seam benchmark: one of each kind of text that stresses a seam differently."""

from __future__ import annotations

__all__ = ["TEXTS"]

_PROSE = (
    "The old harbour town kept its records in a ledger that nobody had opened for years. When the new clerk "
    "arrived, she found it in a cupboard behind the stairs, wrapped in oilcloth and tied with a piece of tarred "
    "string. The first pages were written in a careful, upright hand: the names of ships, the dates they came in, "
    "the cargo they carried and the duty that was paid on it. Salt, timber, wine from the south, wool from the "
    "hills behind the town. Later the hand changed, and the entries became shorter, as if whoever kept them had "
    "less time, or less patience, or simply less to write about.\n\n"
    "She read it in the evenings, after the office had closed. It was not the ships that held her attention, but "
    "the small notes in the margins: a storm that kept the fleet in port for nine days, a fire in the rope-walk, a "
    "child born on a fishing boat and named after the harbour master. In a a way, the ledger was a diary of the "
    "whole town, kept by people who never meant to write one.\n\n"
    "By the end of the winter she had copied the margins into a notebook of her own. She showed it to the "
    "librarian, who showed it to the mayor, who said that it should be printed. It never was. But the notebook "
    "is still there, on the shelf beside the ledger, and anyone who asks may read it - which, as the clerk liked "
    "to say, is more than could be said for most of the town's official history."
)

_MARKDOWN = (
    "## Merging two sorted lists\n\n"
    "The merge step walks both lists once, always taking the smaller head. It runs in linear time:\n\n"
    "```python\n"
    "def merge(a, b):\n"
    '    """Merge two sorted lists into one sorted list."""\n'
    "    out = []\n"
    "    i = j = 0\n"
    "    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n"
    "            out.append(a[i])\n"
    "            i += 1\n"
    "        else:\n"
    "            out.append(b[j])\n"
    "            j += 1\n"
    "    out.extend(a[i:])\n"
    "    out.extend(b[j:])\n"
    "    return out\n"
    "```\n\n"
    "Because `<=` takes from `a` first on a tie, the merge is **stable**: equal items keep their order.\n"
)

_JSON = (
    "{\n"
    '  "id": "order-20931",\n'
    '  "customer": {"name": "Ada Lovelace", "email": "ada@example.org", "vip": true},\n'
    '  "items": [\n'
    '    {"sku": "A-100", "qty": 2, "price": 9.5},\n'
    '    {"sku": "A-101", "qty": 1, "price": 12.0},\n'
    '    {"sku": "B-200", "qty": 10, "price": 0.25}\n'
    "  ],\n"
    '  "shipping": {"method": "standard", "address": "12 Analytical Row, London", "eta_days": 3},\n'
    '  "notes": "Leave at the door; ring twice.",\n'
    '  "total": 33.5\n'
    "}\n"
)

_CHINESE = (
    "春天来了，山上的雪慢慢融化，小河里的水也多了起来。村子里的人们开始忙着耕地、播种，孩子们在田边追着蝴蝶跑。"
    "老李家的院子里种着一棵桃树，每年这个时候都会开满粉红色的花。\n\n"
    "傍晚的时候，老人们坐在村口的大槐树下聊天，说今年的雨水应该不错，庄稼会有好收成。"
    "远处传来几声狗叫，炊烟从屋顶上升起，空气里有一股饭菜的香味。\n\n"
    "到了夜里，月亮挂在天上，照得小路一片银白。青蛙在池塘边一声接一声地叫着，好像在唱一首很长很长的歌。"
)

_LIST = (
    "Ten tips for learning to cook:\n\n"
    "1. Start with a few simple recipes and cook each of them several times.\n"
    "2. Read the whole recipe before you begin, then read it again.\n"
    "3. Keep your knives sharp; a dull knife slips.\n"
    "4. Taste as you go, and season a little at a time.\n"
    "5. Prepare every ingredient before you turn on the heat.\n"
    "6. Learn to control the heat: most mistakes are a pan that is too hot.\n"
    "7. Clean as you go, so the kitchen never gets out of hand.\n"
    "8. Buy a thermometer for meat and for baking.\n"
    "9. Cook with friends, and ask them what they would change.\n"
    "10. Keep a notebook of what worked and what did not.\n"
)

_TABLE = (
    "| month | rain (mm) | sun (h) | frost days |\n"
    "|---|---|---|---|\n"
    "| Jan | 78 | 54 | 12 |\n"
    "| Feb | 60 | 71 | 10 |\n"
    "| Mar | 64 | 110 | 6 |\n"
    "| Apr | 50 | 158 | 2 |\n"
    "| May | 55 | 196 | 0 |\n"
    "| Jun | 52 | 199 | 0 |\n"
    "| Jul | 49 | 211 | 0 |\n"
    "| Aug | 60 | 195 | 0 |\n"
    "| Sep | 58 | 143 | 0 |\n"
    "| Oct | 80 | 104 | 1 |\n"
    "| Nov | 84 | 64 | 6 |\n"
    "| Dec | 82 | 47 | 11 |\n"
)

#: kind of text -> the whole answer the emulated model writes
TEXTS: dict[str, str] = {
    "prose": _PROSE,
    "markdown+code": _MARKDOWN,
    "json": _JSON,
    "chinese": _CHINESE,
    "list": _LIST,
    "table": _TABLE,
}
