"""Settings: environment over TOML, secrets only from the environment or a file."""

import pytest

from musedrp.errors import ConfigError
from musedrp.settings import Settings


def test_environment_is_parsed_and_overrides_the_file(tmp_path):
    config = tmp_path / "musedrp.toml"
    config.write_text('s3_bucket = "from-file"\nmemory_gb = 12.5\n')
    s = Settings.load({"MUSEDRP_CONFIG": str(config), "MUSEDRP_MEMORY_GB": "8",
                       "MUSEDRP_RETRY_DELAYS_S": "1, 5,25", "MUSEDRP_IFUS": "1,2",
                       "OTHER": "ignored"})
    assert (s.s3_bucket, s.memory_gb, s.retry_delays_s, s.ifus) == ("from-file", 8.0,
                                                                   (1, 5, 25), (1, 2))


def test_secret_from_a_file_and_masked_in_public(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t\n")
    s = Settings.load({"MUSEDRP_S3_SECRET_KEY_FILE": str(secret)})
    assert s.s3_secret_key.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in str(s.public()) and "s3cr3t" not in repr(s)


@pytest.mark.parametrize(("environ", "message"), [
    ({"MUSEDRP_MEMORY_GB": "lots"}, "MUSEDRP_MEMORY_GB"),
    ({"MUSEDRP_RETRY_DELAYS_S": "0,5"}, "retry_delays_s must be positive"),
    ({"MUSEDRP_LOG_FORMAT": "xml"}, "MUSEDRP_LOG_FORMAT"),
    ({"MUSEDRP_S3_SECRET_KEY_FILE": "/nonexistent/secret"}, "S3_SECRET_KEY_FILE"),
])
def test_bad_values_name_the_variable(environ, message):
    with pytest.raises(ConfigError, match=message):
        Settings.load(environ)


def test_secrets_are_refused_in_the_config_file(tmp_path):
    config = tmp_path / "musedrp.toml"
    config.write_text('s3_secret_key = "oops"\n')
    with pytest.raises(ConfigError, match="secrets come from the environment"):
        Settings.load({"MUSEDRP_CONFIG": str(config)})
