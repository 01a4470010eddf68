"""The windows' sizes in pixels, apart from Kivy: ``common.gui`` configures Kivy with them
before any Kivy window module is imported, and the apps set their minimum from them."""

# Default sizes, and the smallest at which every label still fits (tests/gui checks both).
SERVER_SIZE, SERVER_MINIMUM = (640, 1000), (600, 940)  # the Setup/Training tabs below
CLIENT_SIZE, CLIENT_MINIMUM = (640, 700), (560, 640)  # the data row, progress and chart below
