"""The read-only pool database backend (``ENGINE: "django_readonly_pool.backend"``)."""
