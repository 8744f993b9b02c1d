"""The web console (``sagas console``): find, watch and operate a saga's instances in a browser.

- ``auth``: who may log in (a shared token, or users with hashed passwords from a file);
- ``data``: what each page shows and does, by calling the index, the journal reader, the
  diagram and the operator library (``sagas.operator``); the threads that keep the indexes fed;
- ``timeline``: an instance's journal entries as a timeline of inputs, commands, replies,
  timers, operator actions and outcomes;
- ``web``: the Starlette application, its Jinja2 templates (``templates/``) and its static
  files (``static/``, with htmx, Pico CSS and Mermaid vendored so that it works offline).

Needs the ``console`` extra (``pip install 'sagalog[console]'``).
"""
