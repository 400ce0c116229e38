"""manage.py gateway_config: the gateway's configuration from this project's
settings, or (--check FILE) every difference from an existing one."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from ...gatewayconf import ConfigurationProblem, Options, compare, desired_configuration, render_toml


class Command(BaseCommand):
    help = (
        "Print the notification gateway's [layer] and [auth] TOML from CHANNEL_LAYERS and "
        "SIMPLE_JWT (secrets as references), or with --check FILE list every difference."
    )

    def add_arguments(self, parser):
        parser.add_argument("--check", metavar="FILE", help="compare with this gateway configuration; exit 1 on drift")
        parser.add_argument("--output", "-o", metavar="FILE", help="write the configuration here instead of stdout")
        parser.add_argument(
            "--include-secrets", action="store_true",
            help="write the JWT secret, encryption keys and Redis passwords literally",
        )
        parser.add_argument("--jwt-secret-env", metavar="NAME", default="",
                            help="environment variable the gateway reads SIGNING_KEY from "
                                 "(default GATEWAY['JWT_SECRET_ENV'], JWT_SIGNING_KEY)")
        parser.add_argument("--jwt-secret-file", metavar="PATH", default="",
                            help="a file the gateway reads SIGNING_KEY from, instead of an environment variable")
        parser.add_argument("--encryption-keys-env", metavar="NAME", default="",
                            help="environment variable with symmetric_encryption_keys "
                                 "(default GATEWAY['ENCRYPTION_KEYS_ENV'], CHANNEL_LAYER_ENCRYPTION_KEYS)")
        parser.add_argument("--encryption-keys-file", metavar="PATH", default="",
                            help="a file with symmetric_encryption_keys, one per line")

    def handle(self, *args, **options):
        try:
            desired = desired_configuration()
        except ConfigurationProblem as problem:
            raise CommandError(str(problem)) from problem
        if options["check"]:
            path = Path(options["check"])
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as error:
                raise CommandError(f"{path}: {error.strerror}") from error
            try:
                differences, unverified = compare(desired, text)
            except ValueError as error:  # tomllib.TOMLDecodeError and json errors
                raise CommandError(f"{path}: not a readable gateway configuration: {error}") from error
            for line in unverified:
                self.stderr.write(f"note: {line}")
            for line in differences:
                self.stdout.write(f"drift: {line}")
            if differences:
                raise CommandError(f"{path}: {len(differences)} difference(s) from this project's settings")
            self.stdout.write(f"{path}: matches this project's settings")
            return
        text = render_toml(
            desired,
            Options(
                include_secrets=options["include_secrets"],
                jwt_secret_env=options["jwt_secret_env"],
                jwt_secret_file=options["jwt_secret_file"],
                encryption_keys_env=options["encryption_keys_env"],
                encryption_keys_file=options["encryption_keys_file"],
            ),
        )
        if options["output"]:
            Path(options["output"]).write_text(text, encoding="utf-8")
        else:
            self.stdout.write(text, ending="")
