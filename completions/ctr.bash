# bash completion for ctr. Generated from the ctr command tree by scripts/gen-docs (or `ctr completion bash`); do not edit.
# Install: copy to /usr/share/bash-completion/completions/ctr (or ~/.local/share/bash-completion/completions/ctr), or `source <(ctr completion bash)` in ~/.bashrc.

_ctr_completion() {
    local IFS=$'\n'
    local response

    response=$(env COMP_WORDS="${COMP_WORDS[*]}" COMP_CWORD=$COMP_CWORD _CTR_COMPLETE=bash_complete $1)

    for completion in $response; do
        IFS=',' read type value <<< "$completion"

        if [[ $type == 'dir' ]]; then
            COMPREPLY=()
            compopt -o dirnames
        elif [[ $type == 'file' ]]; then
            COMPREPLY=()
            compopt -o default
        elif [[ $type == 'plain' ]]; then
            COMPREPLY+=($value)
        fi
    done

    return 0
}

_ctr_completion_setup() {
    complete -o nosort -F _ctr_completion ctr
}

_ctr_completion_setup;
