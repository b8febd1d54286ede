"""receiver: the service behind the CallbackUrl of Alibaba Cloud ICE live snapshot jobs.

The package follows the path of the data (docs/architecture.md): intake -> worker -> adapters/media/db,
read back by web, kept up by ops, wired together in app (the composition root) and started by cli/wsgi.
"""
