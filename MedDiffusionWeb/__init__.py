"""MedDiffusion in the browser: a trame-slicer app with the Translation and Segmentation panels.

`meddiffusion web` (or `python -m MedDiffusionWeb`) serves it; see the README's *Web app* section. Importing this
package imports nothing heavy: trame, trame-slicer and slicer-core are imported when the server starts (server.py),
so the command line reports a missing web extra in one line.

    safety      bind address and access token, upload names and sizes, the app's temporary folder
    slicer_env  the Slicer modules' Logic classes on trame-slicer's MRML scene
    app         the page: views, panels, runs, results, downloads
    server      start-up checks, off-screen rendering, token, clean exit
"""
