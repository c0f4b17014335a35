"""WSGI entry point: Django wrapped by the BITS middleware (never a MIDDLEWARE entry).

cd examples/django_site
BITS_UPLOAD_DIR=./uploads gunicorn -c ../gunicorn.conf.py django_site.wsgi:application
"""

import os

from django.core.wsgi import get_wsgi_application

from bits_wsgi.contrib.django import wrap

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_site.settings")

application = wrap(get_wsgi_application())
