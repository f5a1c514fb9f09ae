"""Plain English text from the shortened Wikipedia dump shipped in examples/data.

The dump is MediaWiki markup; the default model should learn prose, not template syntax, so this
module strips the markup with a few regular expressions. It is deliberately simple: it only has to
be good enough for a few-MB language model and its calibration/evaluation text.
"""

from __future__ import annotations

import bz2
import html
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DUMP = Path(__file__).parent / "data" / ("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")

_NESTED = [re.compile(r"\{\{[^{}]*\}\}"), re.compile(r"\{\|[^{}]*?\|\}", re.S)]
_DROP_LINKS = re.compile(r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*\]\]")
_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]")
_EXTERNAL = re.compile(r"\[https?://[^\s\]]+\s*([^\]]*)\]")
_REFS = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S)
_COMMENTS = re.compile(r"<!--.*?-->", re.S)
_TAGS = re.compile(r"<[^>]+>")
_HEADING = re.compile(r"^=+\s*(.*?)\s*=+\s*$", re.M)
_LIST_MARK = re.compile(r"^[*#:;]+\s*", re.M)
_QUOTES = re.compile(r"'{2,}")
_SPACES = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class Article:
    title: str
    text: str


def strip_markup(markup: str) -> str:
    """Turn MediaWiki markup into paragraphs of plain text."""
    text = _COMMENTS.sub("", markup)
    text = _REFS.sub("", text)
    for pattern in _NESTED:
        previous = None
        while previous != text:
            previous, text = text, pattern.sub("", text)
    previous = None
    while previous != text:
        previous, text = text, _DROP_LINKS.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXTERNAL.sub(r"\1", text)
    text = _TAGS.sub("", text)
    text = html.unescape(text)
    text = _HEADING.sub(r"\1", text)
    text = _LIST_MARK.sub("", text)
    text = _QUOTES.sub("", text)
    paragraphs = []
    for line in text.splitlines():
        line = _SPACES.sub(" ", line).strip()
        # Leftover table rows and template fragments are short and full of pipes.
        if len(line) < 40 or line.count("|") > 1 or line.startswith(("{", "}", "!")):
            continue
        paragraphs.append(line)
    return "\n".join(paragraphs)


def articles(dump: Path = DUMP) -> Iterator[Article]:
    """Yield the main-namespace, non-redirect articles of the dump as plain text."""
    with bz2.open(dump, "rb") as stream:
        title, namespace, redirect = "", "", False
        for _, element in ET.iterparse(stream):
            tag = element.tag.rsplit("}", 1)[-1]
            if tag == "title":
                title = element.text or ""
            elif tag == "ns":
                namespace = element.text or ""
            elif tag == "redirect":
                redirect = True
            elif tag == "text":
                if namespace == "0" and not redirect:
                    text = strip_markup(element.text or "")
                    if text:
                        yield Article(title, text)
            elif tag == "page":
                title, namespace, redirect = "", "", False
                element.clear()
