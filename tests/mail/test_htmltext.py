"""The text/plain alternative made from an HTML body."""

from __future__ import annotations

from notifier.mail.htmltext import html_to_text


def test_pre_blocks_keep_their_indentation_and_blank_lines():
    code = "def f(x):\n    if x:\n\treturn 1\n\n\n    return  2"
    traceback = (
        "Traceback (most recent call last):\n"
        '  File "<cell>", line 3, in <module>\n'
        "    raise ValueError(x)\n"
        "ValueError: bad"
    )
    markup = (
        "<p>The   cell\nfailed:</p>"
        f"<pre style='white-space:pre-wrap'>\n{code}</pre>"
        "<p>Traceback:</p>"
        "<pre>"
        + traceback.replace("raise", "<span class='k'>raise</span>")
        .replace("<cell>", "&lt;cell&gt;")
        .replace("<module>", "&lt;module&gt;")
        + "</pre><p>end</p>"
    )
    assert html_to_text(markup) == (
        f"The cell failed:\n\n{code}\n\nTraceback:\n\n{traceback}\n\nend\n"
    )


def test_text_outside_pre_is_still_reflowed():
    markup = "<h1>  Title </h1>\n\n\n<p>one\n   two</p><ul><li>a</li><li>b</li></ul><br><br><br>x"
    assert html_to_text(markup) == "Title\n\none two\n\n- a\n- b\n\nx\n"
