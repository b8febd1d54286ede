"""The app with fake ICE and fake OSS over loopback, through the real SDK clients; SQLite per test."""
