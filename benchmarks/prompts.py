"""The prompts of the seam-fidelity benchmark: varied on purpose, because each kind of text stresses the seam
differently (word boundaries in prose, newlines and indentation in code, punctuation runs in JSON and tables,
multi-byte characters and elisions in other languages, whitespace runs between blank lines)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROMPTS", "Prompt"]


@dataclass(frozen=True)
class Prompt:
    """One user prompt of the benchmark; ``kind`` groups the results table."""

    name: str
    kind: str
    text: str


PROMPTS: tuple[Prompt, ...] = (
    # --- prose: ordinary word-by-word seams, apostrophes ("it's", "don't") that are single tokens
    Prompt("story_cat", "prose", "Write a short story about a cat who learns to fly."),
    Prompt("story_lighthouse", "prose", "Tell me a story about an old lighthouse keeper and a storm."),
    Prompt("explain_photosynthesis", "prose", "Explain photosynthesis to a ten-year-old."),
    Prompt("letter_complaint", "prose", "Write a polite letter complaining that my neighbour's dog barks at night."),
    Prompt("essay_rivers", "prose", "Write an essay on why rivers matter to cities. Don't use headings."),
    Prompt("dialogue", "prose", "Write a dialogue between a teacher and a student who didn't do the homework."),
    # --- lists: "1. **Bold**" openings, newline + digit seams
    Prompt("list_tips", "list", "Give me a numbered list of 10 tips for learning to cook."),
    Prompt("list_bullets", "list", "List the planets of the solar system as bullet points, one fact each."),
    Prompt("list_steps", "list", "What are the steps to change a flat tire? Use a numbered list with bold step names."),
    Prompt("list_nested", "list", "Make a packing list for a camping trip, grouped under headings with sub-bullets."),
    # --- code: indentation runs, brackets, underscores
    Prompt("code_python", "code", "Write a Python function that checks whether a string is a palindrome, with tests."),
    Prompt("code_js", "code", "Write a JavaScript function that debounces another function, and explain it."),
    Prompt("code_sql", "code", "Write an SQL query that finds the top 5 customers by total order value."),
    Prompt("code_bash", "code", "Write a bash script that backs up a folder into a dated tar.gz archive."),
    Prompt("code_class", "code", "Write a Python class for a bank account with deposit and withdraw methods."),
    # --- JSON / structured: quotes, colons, commas, nested braces
    Prompt(
        "json_person", "json", "Return a JSON object describing a fictional person with name, age, address, hobbies."
    ),
    Prompt("json_list", "json", "Give a JSON array of five books, each with title, author and year."),
    Prompt("yaml_config", "json", "Write a YAML configuration file for a web server with logging and TLS settings."),
    # --- non-English: accents, elisions (l'homme), CJK characters split across byte-level tokens
    Prompt("fr_story", "non-English", "Écris une courte histoire sur un chat qui apprend à voler."),
    Prompt("fr_explain", "non-English", "Explique-moi pourquoi le ciel est bleu, en français."),
    Prompt("de_story", "non-English", "Schreibe eine kurze Geschichte über einen Hund, der Kuchen backt."),
    Prompt("de_explain", "non-English", "Erkläre auf Deutsch, wie ein Kühlschrank funktioniert."),
    Prompt("es_story", "non-English", "Escribe un cuento corto sobre un niño que encuentra un dragón."),
    Prompt("es_recipe", "non-English", "Dame una receta de tortilla española, paso a paso, en español."),
    Prompt("zh_story", "non-English", "请写一个关于小猫学飞的短故事。"),
    Prompt("zh_explain", "non-English", "用中文解释一下为什么天空是蓝色的。"),
    Prompt("ja_poem", "non-English", "日本語で春についての短い詩を書いてください。"),
    # --- whitespace-heavy: blank lines, separators, poems with stanza breaks
    Prompt(
        "poem_stanzas", "blank lines", "Write a poem of four stanzas about the sea, with a blank line between stanzas."
    ),
    Prompt(
        "blank_sections",
        "blank lines",
        "Write three short paragraphs about autumn, separated by two blank lines each, then a line of dashes.",
    ),
    Prompt("haiku_series", "blank lines", "Write five haiku about winter, each separated by an empty line."),
    # --- markdown tables: pipes, dash runs, cell padding
    Prompt("table_fruits", "table", "Make a markdown table of 6 fruits with their colour, taste and season."),
    Prompt(
        "table_compare", "table", "Compare Python, Java and C in a markdown table: typing, speed, memory, use cases."
    ),
    Prompt("table_schedule", "table", "Create a markdown table for a weekly study schedule, Monday to Friday."),
    # --- mixed / markdown
    Prompt("markdown_readme", "markdown", "Write a README.md for a small command-line todo app, with code blocks."),
    Prompt("math", "markdown", "Solve step by step: a train travels 120 km in 1.5 hours; what is its average speed?"),
)
