"""Local fakes of ICE and OSS and a frame generator, for tests and the demo."""
