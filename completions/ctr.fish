# fish completion for ctr. Generated from the ctr command tree by scripts/gen-docs (or `ctr completion fish`); do not edit.
# Install: copy to ~/.config/fish/completions/ctr.fish (or /usr/share/fish/vendor_completions.d/).

function _ctr_completion;
    set -l response (env _CTR_COMPLETE=fish_complete COMP_WORDS=(commandline -cp) \
COMP_CWORD=(commandline -t) ctr);

    for line in $response;
        set -l item (string split -m 2 \t -- $line);
        switch $item[1];
            case dir;
                __fish_complete_directories $item[2];
            case file;
                __fish_complete_path $item[2];
            case plain;
                if test -n "$item[3]";
                    printf '%s\t%s\n' $item[2] $item[3];
                else;
                    printf '%s\n' $item[2];
                end;
        end;
    end;
end;

complete --no-files --command ctr --arguments "(_ctr_completion)";
