def render_html(report):
    return "<html></html>"
