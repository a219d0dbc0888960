"""`pymachine create`: define a detached container (TOML definition + state + unit drop-in).

create writes /etc/pymachine/machines/NAME.toml, claims /var/lib/pymachine/containers/NAME/
(container.json with the container's id and the image it was created from) and the drop-in
pymachine@NAME.service.d/50-pymachine.conf (restart policy, CONTAINER_ID for the journal).
Any failure undoes what was done. `pymachine start NAME` then starts the unit.
"""

from __future__ import annotations

import os
import sys

from machinectl_py.errors import ConflictError, UsageError
from machinectl_py.spec import ContainerSpec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from machinectl_py import state
    from machinectl_py.bus import Bus


def _command() -> object:
    from machinectl_py.args import Command
    from machinectl_py.cmd_run import RUN

    options = [o for o in RUN.options if o.dest not in ("detach", "interactive", "tty")]
    return Command(
        "pymachine create", "pymachine create [OPTIONS] --name NAME IMAGE [COMMAND [ARG...]]",
        "Define a container that runs as the systemd service pymachine@NAME.service.\n\n"
        "Writes its definition to /etc/pymachine/machines/NAME.toml (editable; see the README for the schema)\n"
        "and prints the container's id. Start it with `pymachine start NAME`, or at boot with\n"
        "`systemctl enable pymachine@NAME`.",
        options, positionals=RUN.positionals, rest=RUN.rest)


def main(argv: list[str]) -> int:
    from machinectl_py.cmd_run import spec_from_args

    command = _command()
    args = command.parse(argv)  # type: ignore[attr-defined]
    if args["help"]:
        print(command.help_text(), end="")  # type: ignore[attr-defined]
        return 0
    if args["name"] is None:
        raise UsageError("pymachine create: --name NAME is required", hint="pymachine create --name web busybox ...")
    args.update(detach=False, interactive=False, tty=False)  # run's options that create has not
    record = create(spec_from_args(args))
    print(record.id)
    return 0


def create(spec: ContainerSpec, *, write_definition: bool = True) -> state.ContainerRecord:
    """Make the container's definition, state and drop-in; all or nothing."""
    from machinectl_py import config, images, service, state
    from machinectl_py.bus import Bus
    from machinectl_py.launch import command_for, effective_user

    spec = spec.validate()
    if spec.tty or spec.interactive:
        raise UsageError("a detached container has no terminal: -i/-t work with `pymachine run` and `exec`")
    image = images.resolve(spec.image)
    command_for(spec, image.config)  # fails now, not at start, when there is no command at all
    if write_definition and config.definition_exists(spec.name):
        raise ConflictError(f"a definition for {spec.name!r} exists already: {config.definition_path(spec.name)}",
                            hint=f"start it with 'pymachine start {spec.name}' or remove it with "
                                 f"'pymachine rm {spec.name}'")
    with Bus.system() as bus:
        service.ensure_template(bus)
        state.claim(spec.name)
        done: list[str] = []
        try:
            if spec.volumes:
                from machinectl_py import volumes

                spec = volumes.create_anonymous(spec)
            if write_definition:
                config.write_definition(spec, exclusive=True)
                done.append("definition")
            record = state.ContainerRecord(
                name=spec.name, id=os.urandom(32).hex(), image_name=image.name, image_id=image.id, spec=spec,
                created=state.now(), unit=service.unit_name(spec.name), user=effective_user(spec, image.config))
            state.save(record)
            service.write_dropin(bus, spec.name, record.id, image.name, spec)
            return record
        except BaseException:
            try:
                if "definition" in done:
                    config.remove_definition(spec.name)
                service.remove_dropin(spec.name)
                if spec.volumes:
                    from machinectl_py import volumes

                    volumes.remove_anonymous(spec)
            except Exception:
                pass  # the original error is the one to report
            state.remove_dir(spec.name)
            raise
        finally:
            state.release_claim(spec.name)


def adopt_definition(name: str) -> state.ContainerRecord:
    """A definition written by hand, never started: give it its state and drop-in."""
    from machinectl_py import config

    spec = config.load_definition(name)
    try:
        return create(spec, write_definition=False)
    except ConflictError:
        from machinectl_py import state

        return state.load(name)  # another command adopted it meanwhile


def load_or_adopt(name: str) -> state.ContainerRecord:
    from machinectl_py import config, state
    from machinectl_py.errors import NotFoundError

    try:
        return state.load(name)
    except NotFoundError:
        if config.definition_exists(name):
            return adopt_definition(name)
        raise


def sync_unit(bus: Bus, record: state.ContainerRecord) -> None:
    """Bring the drop-in and the record in line with the definition (an admin may have edited
    the TOML); both are left alone, and the TOML unparsed, when it has not changed since."""
    from machinectl_py import config, service
    from machinectl_py import state as st

    service.ensure_template(bus)
    dropin = os.path.join(service.dropin_dir(record.name), service.DROPIN)
    if os.path.exists(dropin) and not service.definition_is_newer(record.name, dropin):
        return
    if config.definition_exists(record.name):
        spec = config.load_definition(record.name)
        if spec.volumes:
            from machinectl_py import volumes

            spec = volumes.create_anonymous(spec, record.spec)
        record.spec = spec
        st.save(record)  # the setup process reads the spec from here (see service.load_container)
    service.write_dropin(bus, record.name, record.id, record.image_name, record.spec)


def run_detached(spec: ContainerSpec) -> int:
    """`run -d`: create + start; prints the id like docker."""
    from machinectl_py.cmd_lifecycle import start_container

    if spec.tty or spec.interactive:
        raise UsageError("-d cannot be combined with -i/-t", hint="use `pymachine exec -it NAME sh` afterwards")
    record = create(spec)
    start_container(record.name)
    print(record.id)
    sys.stdout.flush()
    return 0
