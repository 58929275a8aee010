"""TEST-ONLY stand-in for `slicer.i18n`: no translations, the source text is returned unchanged."""


def tr(text):
    return text


def translate(context, text):
    return text
