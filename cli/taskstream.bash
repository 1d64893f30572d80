# bash completion for taskstream(1), the command-line client of taskstreamd.
# Installed as share/bash-completion/completions/taskstream.

_taskstream_ask()
{
    # Ask the server (with the URL and credential options of the line being
    # completed), briefly; the first column of its table, header dropped.
    local -a opts=()
    local i
    for ((i = 1; i < ${#COMP_WORDS[@]} - 1; i++)); do
        case ${COMP_WORDS[i]} in
        --url | -u | --token-file | --admin-url)
            opts+=("${COMP_WORDS[i]}" "${COMP_WORDS[i + 1]}")
            ;;
        esac
    done
    "${COMP_WORDS[0]}" "${opts[@]}" --quiet --timeout 2s "$@" 2>/dev/null |
        awk 'NR > 1 { print $1 }'
}

_taskstream()
{
    local cur prev words cword
    _init_completion || return

    local commands="submit follow list show cancel commands drain status help"
    local global="--url --admin-url --token --token-file --json --quiet --timeout --help --version"
    local follow_opts="--last-event-id --reconnect-timeout --max-backoff"

    case $prev in
    --url | -u | --admin-url)
        COMPREPLY=($(compgen -W "http://127.0.0.1:8080 http://127.0.0.1:9090" -- "$cur"))
        return
        ;;
    --token-file | --drain-key-file)
        _filedir
        return
        ;;
    --state)
        local states="queued running succeeded failed cancelled"
        local prefix=""
        [[ $cur == *,* ]] && prefix=${cur%,*},
        COMPREPLY=($(compgen -P "$prefix" -W "$states" -- "${cur##*,}"))
        compopt -o nospace 2>/dev/null
        return
        ;;
    --token | --timeout | --limit | --cursor | --param | -p | --json-params | \
        --last-event-id | --reconnect-timeout | --max-backoff | --command | -c)
        return
        ;;
    esac

    # The command: the first word that is not an option or an option's value.
    local i cmd="" nargs=0
    for ((i = 1; i < cword; i++)); do
        case ${words[i]} in
        --url | -u | --admin-url | --token | --token-file | --timeout | --state | --limit | \
            --cursor | --param | -p | --json-params | --last-event-id | --reconnect-timeout | \
            --max-backoff | --command | -c | --drain-key-file)
            ((i++))
            ;;
        -*) ;;
        *)
            if [[ -z $cmd ]]; then
                cmd=${words[i]}
            else
                ((nargs++))
            fi
            ;;
        esac
    done

    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            COMPREPLY=($(compgen -W "$global" -- "$cur"))
        else
            COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        fi
        return
    fi

    local opts=""
    case $cmd in
    submit) opts="--param --json-params --command --follow $follow_opts" ;;
    follow) opts="$follow_opts" ;;
    list) opts="--state --limit --cursor" ;;
    drain) opts="--undo --drain-key-file" ;;
    status) opts="--drain-key-file" ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts $global" -- "$cur"))
        return
    fi
    case $cmd in
    submit)
        if ((nargs == 0)); then
            COMPREPLY=($(compgen -W "command ticker" -- "$cur"))
        elif ((nargs == 1)) && [[ ${words[*]} == *" command "* ]]; then
            COMPREPLY=($(compgen -W "$(_taskstream_ask commands)" -- "$cur"))
        fi
        ;;
    follow | show | cancel)
        ((nargs == 0)) && COMPREPLY=($(compgen -W "$(_taskstream_ask list --limit 50)" -- "$cur"))
        ;;
    help)
        ((nargs == 0)) && COMPREPLY=($(compgen -W "$commands" -- "$cur"))
        ;;
    esac
} &&
    complete -F _taskstream taskstream
